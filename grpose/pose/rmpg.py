"""RMPG: parse-graph refinement of a feature map, between the pose backbone and its heads.

The C channels of the map are split recursively into a tree (splits `[2, 2]`: 2 x C/2, then
4 x C/4). Top-down, every internal node relates its children: affinities from their pooled
features weigh the siblings' maps into a context map for each child. Bottom-up, each child is
combined with its context and the children are concatenated back, up to the root; the refined
map is added to the input through a zero-initialised 1x1 conv, so RMPG starts as the identity.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn


class ContextRelation(nn.Module):
    """Context of each of `num_children` sibling maps: their affinity-weighted sum of the others.

    The affinity of child i to sibling j is `sigmoid(q_i . k_j / sqrt(d))` from the children's
    globally pooled features (self excluded), so even two children have a learned, per-image
    relation strength.
    """

    def __init__(self, channels: int, num_children: int, dim: int = 16):
        super().__init__()
        if num_children < 2:
            raise ValueError(f"a parse node needs at least 2 children, got {num_children}")
        self.query = nn.Linear(channels, dim)
        self.key = nn.Linear(channels, dim)
        self.value = nn.Conv2d(channels, channels, 1)
        self.register_buffer("others", 1.0 - torch.eye(num_children), persistent=False)

    def affinity(self, children: torch.Tensor) -> torch.Tensor:
        """`(B, K, K)` relation weights of `(B, K, c, h, w)` children; zero on the diagonal."""
        pooled = children.mean(dim=(3, 4))  # (B, K, c)
        q, k = self.query(pooled), self.key(pooled)  # (B, K, d)
        logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, K, K)
        return torch.sigmoid(logits) * self.others / (self.others.shape[0] - 1)

    def forward(self, children: torch.Tensor) -> torch.Tensor:
        b, k, c, h, w = children.shape
        values = self.value(children.flatten(0, 1)).view(b, k, c, h, w)
        return torch.einsum("bij,bjchw->bichw", self.affinity(children), values)  # (B, K, c, h, w)


class ParseNode(nn.Module):
    """One node of the channel tree: splits its map among child nodes (if any) and, when it has a
    parent, combines its refined map with the context its parent gave it."""

    def __init__(self, channels: int, splits: tuple[int, ...], relation_dim: int = 16,
                 has_context: bool = False):
        super().__init__()
        self.num_children = splits[0] if splits else 0
        self.nodes = nn.ModuleList()
        if self.num_children:
            if channels % self.num_children:
                raise ValueError(f"{channels} channels do not split into {self.num_children}")
            child = channels // self.num_children
            self.relation = ContextRelation(child, self.num_children, relation_dim)
            self.nodes.extend(ParseNode(child, splits[1:], relation_dim, has_context=True)
                              for _ in range(self.num_children))
        self.combine = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True)) if has_context else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                collect: dict | None = None, path: tuple[int, ...] = ()) -> torch.Tensor:
        """Refined map of this node; with `collect`, every node's refined map is stored in it
        under its path from the root (`()` the root, `(1, 0)` the first child of the second)."""
        if self.num_children:
            b, c, h, w = x.shape
            children = x.view(b, self.num_children, c // self.num_children, h, w)
            contexts = self.relation(children)  # (B, K, c/K, h, w)
            x = torch.cat([node(children[:, i], contexts[:, i], collect, path + (i,))
                           for i, node in enumerate(self.nodes)], dim=1)  # (B, C, h, w)
        if self.combine is not None:
            x = x + self.combine(torch.cat([x, context], dim=1))
        if collect is not None:
            collect[path] = x
        return x


class RMPG(nn.Module):
    """Parse-graph refinement of a `(B, C, h, w)` map; output has the same shape.

    Args:
        channels: C, divisible by the product of `splits`.
        splits: children per node at each tree level (top-down), e.g. `[2, 2]`.
        enabled: False makes the module the identity with no parameters (to measure its effect).
        relation_dim: width of the query/key projections of the context relations.

    `forward(x, collect=nodes)` also fills the dict `nodes` with each tree node's refined
    sub-feature map `(B, C / n, h, w)` keyed by its path (see `ParseNode.forward`), so auxiliary
    heads can supervise chosen sub-nodes; `node_paths(level)` lists the paths of one level.
    """

    def __init__(self, channels: int, splits: tuple[int, ...] | list[int] = (2, 2),
                 enabled: bool = True, relation_dim: int = 16):
        super().__init__()
        self.enabled = enabled
        if not enabled:
            return
        if not splits:
            raise ValueError("RMPG needs at least one split level (or enabled=False)")
        self.splits = tuple(splits)
        self.root = ParseNode(channels, self.splits, relation_dim)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def node_paths(self, level: int) -> list[tuple[int, ...]]:
        """Paths of the tree's nodes at `level` (0: the root; 1: its children; ...), in order."""
        if not self.enabled or not 0 <= level <= len(self.splits):
            raise ValueError(f"RMPG with splits {list(getattr(self, 'splits', []))} has no "
                             f"level {level}")
        return list(itertools.product(*(range(k) for k in self.splits[:level])))

    def forward(self, x: torch.Tensor, collect: dict | None = None) -> torch.Tensor:
        if not self.enabled:
            return x
        return x + self.out(self.root(x, collect=collect))  # (B, C, h, w)
