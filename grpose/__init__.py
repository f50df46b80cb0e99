"""grpose: pose-guided human image generation on Stable Diffusion (GRPose and baselines).

Packages in data-flow order (each imports only earlier ones): data -> pose -> graph -> methods
-> diffusion -> metrics -> callbacks -> demo, cli.
"""
__version__ = "0.1.0"
