"""The released GRPose "feature graph": every feature-map pixel is a node, linked to its k
nearest neighbours in feature space, recomputed each forward.

The edge convolution is the release's: `max_j ReLU(W [x_i, x_j - x_i] + b)` with `W` a 1x1 conv
of groups 4 (weight `(C, 2C / 4, 1, 1)`), which `dgl.nn.EdgeConv` (two dense maps) cannot hold.
Being linear, `W [x_i, x_j - x_i] + b = p_i + q_j` with `p = W [x, -x] + b` and `q = W [0, x]`,
so a layer is two node-wise convs and a max over neighbours of `q`.

Device rule: on CPU features the kNN graph is DGL's `segmented_knn_graph` and the max is DGL
message passing; on any other device (the installed DGL is a CPU-only build) both are computed
in plain torch, the same edges and the same parameters.
"""
from __future__ import annotations

from itertools import groupby

import torch
import torch.nn.functional as F
from torch import nn

from grpose.graph.backend import dgl


def knn_pixel_graph(nodes: torch.Tensor, k: int, segments: list[int]) -> dgl.DGLGraph:
    """kNN graph of `nodes (N, C)` within each segment, by L2-normalised features, self included.

    Edges go from each of a node's k nearest neighbours to the node; built without gradient, on
    the CPU (DGL's kNN and graphs are CPU-only here).
    """
    with torch.no_grad():
        unit = F.normalize(nodes.detach().float(), dim=-1).cpu()
        return dgl.segmented_knn_graph(unit, k, segments)


def knn_neighbours(nodes: torch.Tensor, k: int, segments: list[int],
                   max_elements: int = 2 ** 26) -> torch.Tensor:
    """`(N, k)` node indices of the k nearest neighbours of each node of `nodes (N, C)` within its
    segment, nearest first: the edges of `knn_pixel_graph`, in torch on the device of `nodes`.

    Like DGL, k is clamped to the smallest segment. Runs of equal segments share one batched
    distance computation, split over query rows so that at most `max_elements` distances are
    held at once.
    """
    k = min(k, min(segments))
    with torch.no_grad():
        unit = F.normalize(nodes.detach().float(), dim=-1)
        neighbours, start = [], 0
        for size, run in groupby(segments):
            count = len(list(run))
            points = unit[start:start + count * size].view(count, size, -1)  # (G, S, C)
            rows = max(1, max_elements // (count * size))
            nearest = torch.cat([torch.cdist(points[:, i:i + rows], points)  # (G, rows, S)
                                 .topk(k, dim=-1, largest=False).indices
                                 for i in range(0, size, rows)], 1)  # (G, S, k)
            offsets = start + size * torch.arange(count, device=unit.device)  # (G,)
            neighbours.append((nearest + offsets[:, None, None]).flatten(0, 1))
            start += count * size
        return torch.cat(neighbours)  # (N, k)


def edge_terms(conv: nn.Conv2d, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(p, q)`, each `(N, C_out)`, of the edge conv `conv` (`2 C -> C_out`, 1x1, grouped) on
    `nodes (N, C)`: the message from node j to node i is `p_i + q_j = conv([x_i, x_j - x_i])`."""
    x = nodes[:, :, None, None]  # (N, C, 1, 1)
    p = conv(torch.cat([x, -x], 1))
    q = F.conv2d(torch.cat([torch.zeros_like(x), x], 1), conv.weight, None, groups=conv.groups)
    return p.flatten(1), q.flatten(1)


def edge_conv_dgl(conv: nn.Conv2d, graph: dgl.DGLGraph, nodes: torch.Tensor) -> torch.Tensor:
    """`max_j ReLU(conv([x_i, x_j - x_i]))` over the in-edges `j -> i` of `graph`, `(N, C_out)`,
    by DGL message passing."""
    p, q = edge_terms(conv, nodes)
    with graph.local_scope():
        graph.srcdata["q"] = q
        graph.update_all(dgl.function.copy_u("q", "m"), dgl.function.max("m", "q_max"))
        return F.relu(p + graph.dstdata["q_max"])


def edge_conv_from_neighbours(conv: nn.Conv2d, nodes: torch.Tensor,
                              neighbours: torch.Tensor) -> torch.Tensor:
    """`edge_conv_dgl` in torch, for the graph with edges `neighbours[i, :] -> i`."""
    p, q = edge_terms(conv, nodes)
    return F.relu(p + q[neighbours].max(1).values)  # (N, C_out)


class FeatureGraphBlock(nn.Module):
    """`x + EdgeConv(h)` with `h = BN(conv1x1(x))` over the kNN graph of the pixels of `h`, one
    graph per image; EdgeConv as released (see the module docstring). DGL computes it on CPU
    inputs, torch on other devices (`use_dgl` of `forward` overrides this).

    Args:
        channels: feature channels (kept).
        k: neighbours per node, self included (fewer where the map has fewer pixels).
        groups: groups of the edge conv (the release: 4).
    """

    def __init__(self, channels: int, k: int = 9, groups: int = 4):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        self.k = k
        self.proj = nn.Conv2d(channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        self.edge_conv = nn.Conv2d(2 * channels, channels, 1, groups=groups)

    def forward(self, x: torch.Tensor, use_dgl: bool | None = None) -> torch.Tensor:
        """`x (B, C, H, W)` -> `(B, C, H, W)`."""
        b, c, h, w = x.shape
        nodes = self.norm(self.proj(x)).flatten(2).transpose(1, 2).reshape(b * h * w, c)
        k, segments = min(self.k, h * w), [h * w] * b
        use_dgl = x.device.type == "cpu" if use_dgl is None else use_dgl
        if use_dgl:
            out = edge_conv_dgl(self.edge_conv, knn_pixel_graph(nodes, k, segments), nodes)
        else:
            neighbours = knn_neighbours(nodes, k, segments)  # (B * H * W, k)
            out = edge_conv_from_neighbours(self.edge_conv, nodes, neighbours)
        return x + out.view(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
