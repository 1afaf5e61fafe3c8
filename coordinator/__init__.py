"""Everything that runs at the coordinator: verifies, pools, trains and reports.
It only ever sees synthetic images and signed numbers."""
