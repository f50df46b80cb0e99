"""Latent diffusion: frozen parts, the LightningModule, sampling and losses."""
from grpose.diffusion.module import PoseDiffusionModule

__all__ = ["PoseDiffusionModule"]
