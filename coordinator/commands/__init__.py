"""One module per `synthlearn coordinator` command; each exposes ``command``."""
