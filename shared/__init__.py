"""Code that both a hospital node and the coordinator import: models, losses, metrics,
signing, the bundle format and typed configuration. Nothing here imports Flower."""

__version__ = "0.1.0"
