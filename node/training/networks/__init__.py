"""GAN networks shared by node training, generation and the benchmark.

``build_generator(arch)`` / ``build_discriminator(arch)`` rebuild a network from the dict its
``architecture()`` returned, which is what checkpoints store next to the weights.
"""

from __future__ import annotations

from typing import Any

from node.training.networks.discriminator import Discriminator
from node.training.networks.generator import Generator, check_resolution

__all__ = ["Discriminator", "Generator", "build_discriminator", "build_generator",
           "check_resolution"]


def build_generator(arch: dict[str, Any]) -> Generator:
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    return Generator(**kwargs)


def build_discriminator(arch: dict[str, Any]) -> Discriminator:
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    return Discriminator(**kwargs)
