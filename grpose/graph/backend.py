"""The one place grpose imports DGL.

dgl 2.1.0 is the newest wheel for Python 3.11. Its `graphbolt` subpackage loads a compiled
library built only for old torch releases and fails to import on current torch, and `import dgl`
imports `dgl.graphbolt` eagerly. grpose uses none of graphbolt, so an empty module is registered
under that name first; the rest of dgl (graphs, kNN, message passing, `dgl.nn`) works unchanged.
Every other module gets dgl from here (`from grpose.graph.backend import dgl`).
"""
import sys
import types

if "dgl" not in sys.modules:
    sys.modules.setdefault("dgl.graphbolt", types.ModuleType("dgl.graphbolt"))

import dgl  # noqa: E402
import dgl.nn.pytorch  # noqa: E402,F401

__all__ = ["dgl"]
