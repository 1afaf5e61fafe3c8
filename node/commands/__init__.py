"""One module per `synthlearn node` command; each exposes ``command``."""
