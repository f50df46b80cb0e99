"""Lightning callbacks: TensorBoard image grids and the prediction writer."""
from grpose.callbacks.images import GenerationWriter, PoseGridLogger

__all__ = ["GenerationWriter", "PoseGridLogger"]
