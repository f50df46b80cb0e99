"""grpose: pose-guided human image generation on Stable Diffusion (GRPose and baselines)."""
# Importing the graph backend first makes a later plain `import dgl` work too (see its docstring).
import grpose.graph.backend  # noqa: F401

__version__ = "0.1.0"
