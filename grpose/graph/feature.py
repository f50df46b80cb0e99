"""The released GRPose "feature graph": every feature-map pixel is a node, linked to its k
nearest neighbours in feature space, recomputed each forward.

Device rule: on CPU features the kNN graph is DGL's `segmented_knn_graph` and the convolution
`dgl.nn.EdgeConv`; on any other device (the installed DGL is a CPU-only build) both are computed
in plain torch, the same edges and the same `EdgeConv` parameters.
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


def edge_conv_from_neighbours(conv: dgl.nn.EdgeConv, nodes: torch.Tensor,
                              neighbours: torch.Tensor) -> torch.Tensor:
    """`conv(graph, nodes)` in torch, for the graph with edges `neighbours[i, :] -> i`:
    `max_j theta(x_i - x_j) + phi(x_i)` per node `(N, C_out)`, the messages batch-normed first
    (over all edges) where `conv` has batch norm. The sign is that of DGL's code (`v_sub_u`,
    node minus neighbour), not of its docstring (`x_j - x_i`)."""
    difference = nodes[:, None] - nodes[neighbours]  # (N, k, C): x_i - x_j
    messages = conv.theta(difference) + conv.phi(nodes)[:, None]  # (N, k, C_out)
    if conv.batch_norm:
        messages = conv.bn(messages.flatten(0, 1)).view_as(messages)
    return messages.max(1).values


class FeatureGraphBlock(nn.Module):
    """`x + ReLU(EdgeConv(h))` with `h = BN(conv1x1(x))` over the kNN graph of the pixels of `h`,
    one graph per image. EdgeConv takes, at each node, the max over its neighbours of a linear
    map of the node and of its difference to the neighbour. DGL computes both on CPU inputs,
    torch on other devices (`use_dgl` of `forward` overrides this).

    Args:
        channels: feature channels (kept).
        k: neighbours per node, self included (fewer where the map has fewer pixels).
    """

    def __init__(self, channels: int, k: int = 9):
        super().__init__()
        self.k = k
        self.proj = nn.Conv2d(channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        self.edge_conv = dgl.nn.EdgeConv(channels, channels)

    def forward(self, x: torch.Tensor, use_dgl: bool | None = None) -> torch.Tensor:
        """`x (B, C, H, W)` -> `(B, C, H, W)`."""
        b, c, h, w = x.shape
        nodes = self.norm(self.proj(x)).flatten(2).transpose(1, 2).reshape(b * h * w, c)
        k, segments = min(self.k, h * w), [h * w] * b
        use_dgl = x.device.type == "cpu" if use_dgl is None else use_dgl
        if use_dgl:
            out = self.edge_conv(knn_pixel_graph(nodes, k, segments), nodes)
        else:
            neighbours = knn_neighbours(nodes, k, segments)  # (B * H * W, k)
            out = edge_conv_from_neighbours(self.edge_conv, nodes, neighbours)
        out = F.relu(out)  # (B * H * W, C)
        return x + out.view(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)
