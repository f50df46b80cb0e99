"""Graphs for the PGI adapters. `grpose.graph.backend` is the one module that imports DGL."""
from grpose.graph.backend import dgl

__all__ = ["dgl"]
