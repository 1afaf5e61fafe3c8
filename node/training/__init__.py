"""GAN / SpineGAN training on a site store (`synthlearn node train`).

``train(site_dir, cfg, run_name)`` is the entry point; the loop lives in :mod:`.loop`.
"""

from __future__ import annotations

from node.training.config import GanConfig
from node.training.loop import train

__all__ = ["GanConfig", "train"]
