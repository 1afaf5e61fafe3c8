"""One module per `synthlearn audit` command; each exposes ``command``."""
