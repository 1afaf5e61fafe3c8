"""Everything that runs inside a hospital. Real pixels are read here and never leave."""
