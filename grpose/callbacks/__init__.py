"""Lightning callbacks: TensorBoard image grids, the prediction writer, the run's checkpoints
and progress bar."""
from grpose.callbacks.images import GenerationWriter, PoseGridLogger
from grpose.callbacks.run import RunCheckpoint, RunProgressBar, checkpoint_dir, run_dir

__all__ = ["GenerationWriter", "PoseGridLogger", "RunCheckpoint", "RunProgressBar",
           "checkpoint_dir", "run_dir"]
