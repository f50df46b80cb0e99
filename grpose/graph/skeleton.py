"""The skeleton graph of the GRPose PGI: joints -> five parts -> one body node per person.

Each person with at least two present joints (confidence above `CONF_THRESHOLD`) gives one joint
graph (its present joints; bones of `HUMANSD_LIMBS` plus shoulder-shoulder and hip-hip, both
directions, plus self loops) and one part graph (the parts holding a present joint; parts are
linked where a bone joins them, plus self loops). All people of a batch go into one batched DGL
graph per level, so message passing is one call however many people there are.

Device rule: the DGL graphs are always built and kept on the CPU (the installed DGL is a CPU-only
build) while the index tensors (edge lists included) go to the feature device. Message passing
is the mean over the edge list in plain torch on every device by default: on these small graphs
DGL's `update_all` costs about 1.7x as much on the CPU (per-call overhead; `docs/benchmarks.md`)
and cannot run on a GPU; `use_dgl=True` runs DGL's (tested equal). Up to `DENSE_MAX_NODES`
joints, every mean (over in-edges, joints -> parts, parts -> bodies) is also built once per
batch as a dense row-normalised matrix, so that the hierarchy's eight means at each level are
one matrix product each instead of a chain of small index ops (the same sums).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from grpose.data.skeletons import CONF_THRESHOLD, COCO17_PARTS, HUMANSD_LIMBS, NUM_JOINTS
from grpose.graph.backend import dgl

fn = dgl.function
DENSE_MAX_NODES = 2048
"""Most joints in a batch for which the means are dense matrices (beyond: edge lists only)."""

BONES: tuple[tuple[int, int], ...] = HUMANSD_LIMBS + ((5, 6), (11, 12))
"""Undirected joint edges: the 16 HumanSD limbs, shoulder-shoulder and hip-hip."""

NUM_PARTS = len(COCO17_PARTS)
PART_OF_JOINT: tuple[int, ...] = tuple(
    next(k for k, joints in enumerate(COCO17_PARTS.values()) if j in joints)
    for j in range(NUM_JOINTS))
PART_BONES: tuple[tuple[int, int], ...] = tuple(sorted(
    {(PART_OF_JOINT[a], PART_OF_JOINT[b]) for a, b in BONES
     if PART_OF_JOINT[a] != PART_OF_JOINT[b]}))
"""Undirected part edges: two parts are linked where a bone joins them."""


def _directed_edges(bones: tuple[tuple[int, int], ...], num_nodes: int) -> torch.Tensor:
    # (2, E) src / dst: every bone in both directions, then one self loop per node
    pairs = list(bones) + [(b, a) for a, b in bones] + [(i, i) for i in range(num_nodes)]
    return torch.tensor(pairs, dtype=torch.long).T


JOINT_EDGES = _directed_edges(BONES, NUM_JOINTS)  # (2, 2 * 18 + 17)
PART_EDGES = _directed_edges(PART_BONES, NUM_PARTS)  # (2, 2 * 6 + 5)


@dataclass
class SkeletonGraph:
    """The batched skeleton graphs of a batch of images (all indices are node indices).

    Joint, part and body nodes are ordered by (image, person, joint / part), so the nodes of
    one person are contiguous and `joints` / `parts` are DGL batches of one graph per person,
    built on first use (the torch paths read only the edge lists and means). The DGL graphs are
    on the CPU, the tensors on the feature device.
    """

    joint_xy: torch.Tensor  # (Nj, 2) pose-image pixel coordinates
    joint_id: torch.Tensor  # (Nj,) COCO-17 index
    joint_part: torch.Tensor  # (Nj,) part node of each joint
    joint_image: torch.Tensor  # (Nj,) batch index
    part_id: torch.Tensor  # (Np,) index into COCO17_PARTS
    part_body: torch.Tensor  # (Np,) body node of each part
    body_image: torch.Tensor  # (Nb,) batch index of each person with a graph
    joint_edges: torch.Tensor  # (2, Ej) src / dst joint nodes of `joints`' edges
    part_edges: torch.Tensor  # (2, Ep) src / dst part nodes of `parts`' edges
    bones: torch.Tensor  # (Nbones, 2) joint nodes of each present bone, once
    num_images: int
    joint_mean: torch.Tensor | None = None  # (Nj, Nj) mean over each joint's in-edges
    part_mean: torch.Tensor | None = None  # (Np, Np) mean over each part's in-edges
    joint_pool: torch.Tensor | None = None  # (Np, Nj) mean of each part's joints
    part_pool: torch.Tensor | None = None  # (Nb, Np) mean of each body's parts
    # per level: (CPU edges (2, E), nodes per person (Nb,), edges per person (Nb,)); then DGL's
    levels: dict = field(default_factory=dict, repr=False)

    def _dgl(self, level: str) -> dgl.DGLGraph:
        if not isinstance(self.levels[level], dgl.DGLGraph):
            self.levels[level] = _batched_graph(*self.levels[level])
        return self.levels[level]

    @property
    def joints(self) -> dgl.DGLGraph:
        """The joint graphs (Nj nodes, CPU), one per person, batched."""
        return self._dgl("joints")

    @property
    def parts(self) -> dgl.DGLGraph:
        """The part graphs (Np nodes, CPU), one per person, batched."""
        return self._dgl("parts")

    @property
    def num_joints(self) -> int:
        return self.joint_id.shape[0]

    @property
    def num_parts(self) -> int:
        return self.part_id.shape[0]

    @property
    def num_bodies(self) -> int:
        return self.body_image.shape[0]


def _node_index(present: torch.Tensor) -> torch.Tensor:
    # running node index of every True entry (row-major order), -1 elsewhere
    index = present.flatten().cumsum(0).view_as(present) - 1
    return torch.where(present, index, torch.full_like(index, -1))


def _person_edges(node: torch.Tensor, edges: torch.Tensor, person_ok: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the edges (2, E) of one graph per valid person from node indices (B, P, K) and template
    # edges (2, E'), with the nodes and edges per person (Nb,)
    src, dst = node[..., edges[0]], node[..., edges[1]]  # (B, P, E')
    keep = (src >= 0) & (dst >= 0)
    return (torch.stack([src[keep], dst[keep]]), (node >= 0).sum(-1)[person_ok],
            keep.sum(-1)[person_ok])


def _batched_graph(edges: torch.Tensor, nodes_per_person: torch.Tensor,
                   edges_per_person: torch.Tensor) -> dgl.DGLGraph:
    graph = dgl.graph((edges[0], edges[1]), num_nodes=int(nodes_per_person.sum()))
    graph.set_batch_num_nodes(nodes_per_person)
    graph.set_batch_num_edges(edges_per_person)
    return graph


def mean_matrix(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """`(R, C)` matrix whose row r averages the columns `cols[k]` of the entries with
    `rows[k] == r` (repeats counted; an empty row is zero): `M @ x == segment_mean(x[cols], rows,
    R)`."""
    m = torch.zeros(shape)
    m.index_put_((rows, cols), torch.ones(rows.shape[0]), accumulate=True)
    return m / m.sum(1, keepdim=True).clamp(min=1)


def build_skeleton_graph(keypoints: torch.Tensor, person_mask: torch.Tensor,
                         device: torch.device | str | None = None) -> SkeletonGraph:
    """Joint and part graphs of `keypoints (B, P, 17, 3)` (x, y, conf) and `person_mask (B, P)`.

    A joint is present when its confidence is above `CONF_THRESHOLD`; a person with fewer than
    two present joints gets no nodes, nor does an image without people. The graphs are built on
    the CPU; the index and coordinate tensors go to `device` (default: that of `keypoints`).
    """
    device = keypoints.device if device is None else torch.device(device)
    keypoints, person_mask = keypoints.cpu(), person_mask.cpu()
    present = (keypoints[..., 2] > CONF_THRESHOLD) & person_mask[..., None]  # (B, P, 17)
    person_ok = present.sum(-1) >= 2  # (B, P)
    present = present & person_ok[..., None]
    part_of_joint = torch.tensor(PART_OF_JOINT)
    membership = nn.functional.one_hot(part_of_joint, NUM_PARTS).float()  # (17, 5)
    part_present = (present.float() @ membership) > 0  # (B, P, 5)

    joint_node, part_node = _node_index(present), _node_index(part_present)
    body_node = _node_index(person_ok)  # (B, P)
    b, p, j = present.nonzero(as_tuple=True)
    pb, pp, pk = part_present.nonzero(as_tuple=True)
    bones = torch.tensor(BONES).T  # (2, 18)
    bone_nodes = torch.stack([joint_node[..., bones[0]], joint_node[..., bones[1]]], -1)
    bone_nodes = bone_nodes[(bone_nodes >= 0).all(-1)]  # (Nbones, 2)
    levels = dict(joints=_person_edges(joint_node, JOINT_EDGES, person_ok),
                  parts=_person_edges(part_node, PART_EDGES, person_ok))
    joint_edges, part_edges = levels["joints"][0], levels["parts"][0]  # (2, E) each
    joint_part, part_body = part_node[b, p, part_of_joint[j]], body_node[pb, pp]
    nj, np_, nb = len(j), len(pk), int(person_ok.sum())
    dense = {}
    if nj <= DENSE_MAX_NODES:
        dense = dict(joint_mean=mean_matrix(joint_edges[1], joint_edges[0], (nj, nj)),
                     part_mean=mean_matrix(part_edges[1], part_edges[0], (np_, np_)),
                     joint_pool=mean_matrix(joint_part, torch.arange(nj), (np_, nj)),
                     part_pool=mean_matrix(part_body, torch.arange(np_), (nb, np_)))
    return SkeletonGraph(
        joint_xy=keypoints[b, p, j, :2].to(device),
        joint_id=j.to(device),
        joint_part=joint_part.to(device),
        joint_image=b.to(device),
        part_id=pk.to(device),
        part_body=part_body.to(device),
        body_image=person_ok.nonzero(as_tuple=True)[0].to(device),
        joint_edges=joint_edges.to(device),
        part_edges=part_edges.to(device),
        bones=bone_nodes.to(device),
        num_images=keypoints.shape[0],
        **{k: v.to(device) for k, v in dense.items()},
        levels=levels,
    )


def pooled_mean(x: torch.Tensor, matrix: torch.Tensor | None, index: torch.Tensor,
                size: int) -> torch.Tensor:
    """`segment_mean(x, index, size)`, as one product with its dense `mean_matrix` if given."""
    if matrix is None:
        return segment_mean(x, index, size)
    return matrix.to(x.dtype) @ x  # (size, N) @ (N, C)


def segment_mean(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of the rows of `x (N, C)` per `index (N,)` value: `(size, C)`, zero where empty."""
    total = x.new_zeros(size, x.shape[-1]).index_add_(0, index, x)
    ones = x.new_ones(index.shape[0], dtype=torch.float32)
    count = ones.new_zeros(size).index_add_(0, index, ones)  # (size,), no host sync
    return total / count.clamp(min=1)[:, None].to(x.dtype)


class SkeletonMessagePassing(nn.Module):
    """One residual message-passing layer: `x + MLP([h, mean_{j -> i} W h_j])` with `h = LN(x)`,
    the mean over the in-neighbours of each node (its self loop included): an edge-list mean in
    torch, or DGL's `update_all` with `use_dgl=True` (CPU features only).

    Args:
        dim: node feature width.
        hidden: width of the update MLP (default 2 * dim).
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * dim
        self.norm = nn.LayerNorm(dim)
        self.message = nn.Linear(dim, dim)
        self.update = nn.Sequential(nn.Linear(2 * dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def combine(self, x: torch.Tensor, h: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        """The residual update from the normed nodes `h` and their aggregated messages."""
        return x + self.update(torch.cat([h, aggregated], -1))

    def forward(self, graph: dgl.DGLGraph | None, x: torch.Tensor,
                edges: torch.Tensor | None = None,
                use_dgl: bool = False, mean: torch.Tensor | None = None) -> torch.Tensor:
        """`x (N, D)` -> `(N, D)` over `graph`, whose edge list `edges (2, E)` may be given
        (on `x`'s device) to save reading it from the DGL graph, or its in-edge `mean_matrix`
        `mean (N, N)` (then the mean is one matrix product)."""
        h = self.norm(x)  # (N, D)
        messages = self.message(h)  # (N, D)
        if use_dgl:
            with graph.local_scope():
                graph.ndata["m"] = messages
                graph.update_all(fn.copy_u("m", "msg"), fn.mean("msg", "agg"))
                aggregated = graph.ndata["agg"]  # (N, D)
        elif mean is not None:
            aggregated = mean.to(messages.dtype) @ messages  # (N, N) @ (N, D)
        else:
            if edges is None:
                edges = torch.stack(graph.edges()).to(x.device)
            src, dst = edges  # (E,) each
            aggregated = segment_mean(messages[src], dst, messages.shape[0])
        return self.combine(x, h, aggregated)


class SkeletonHierarchy(nn.Module):
    """Progressive message passing: joints -> parts -> body, then back down body -> parts ->
    joints. Parts are the mean of their joints plus a part embedding, the body the mean of its
    parts; each level passes messages over its own graph.

    Args:
        dim: node feature width.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.joint_up = SkeletonMessagePassing(dim)
        self.part_embed = nn.Embedding(NUM_PARTS, dim)
        self.part_up = SkeletonMessagePassing(dim)
        self.body = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(),
                                  nn.Linear(dim, dim))
        self.body_to_part = nn.Linear(dim, dim)
        self.part_down = SkeletonMessagePassing(dim)
        self.part_to_joint = nn.Linear(dim, dim)
        self.joint_down = SkeletonMessagePassing(dim)

    def forward(self, graph: SkeletonGraph, joints: torch.Tensor) -> torch.Tensor:
        """`joints (Nj, D)` -> `(Nj, D)`."""
        g = graph
        joints = self.joint_up(None, joints, g.joint_edges, mean=g.joint_mean)
        parts = pooled_mean(joints, g.joint_pool, g.joint_part, g.num_parts)  # (Np, D)
        parts = self.part_up(None, parts + self.part_embed(g.part_id), g.part_edges,
                             mean=g.part_mean)
        body = pooled_mean(parts, g.part_pool, g.part_body, g.num_bodies)  # (Nb, D)
        body = body + self.body(body)
        parts = self.part_down(None, parts + self.body_to_part(body)[g.part_body],
                               g.part_edges, mean=g.part_mean)
        joints = joints + self.part_to_joint(parts)[g.joint_part]  # (Nj, D)
        return self.joint_down(None, joints, g.joint_edges, mean=g.joint_mean)
