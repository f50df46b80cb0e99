"""Latent diffusion: frozen parts, the LightningModule and its settings, sampling and losses."""
from grpose.diffusion.module import PoseDiffusionModule
from grpose.diffusion.settings import MemorySettings, SamplingSettings, TrainingSettings

__all__ = ["MemorySettings", "PoseDiffusionModule", "SamplingSettings", "TrainingSettings"]
