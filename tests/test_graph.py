"""The PGI graphs: skeleton graph batching, DGL message passing vs a dense reference, feature
kNN vs brute force, the torch paths used off the CPU vs DGL's, and the grid helpers of the
skeleton stage. The meta device stands in for a GPU: DGL cannot take its tensors."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from grpose.data.skeletons import NUM_JOINTS
from grpose.graph.backend import dgl
import torch.nn.functional as F

from grpose.graph.feature import (FeatureGraphBlock, edge_conv_dgl, edge_conv_from_neighbours,
                                  knn_neighbours, knn_pixel_graph)
from grpose.graph.skeleton import (BONES, PART_BONES, PART_OF_JOINT, SkeletonHierarchy,
                                   SkeletonMessagePassing, build_skeleton_graph)
from grpose.methods.grpose.skeleton import (SkeletonPGIStage, sample_at_points, splat,
                                            splat_weights, to_feature_grid)

MISSING = torch.tensor([-1.0, -1.0, 0.0])


def brute_force_knn(nodes: torch.Tensor, k: int, segments: list[int]) -> set[tuple[int, int]]:
    """The `(src, dst)` edge set `knn_pixel_graph` should build, by full distance matrices."""
    edges, start = set(), 0
    for size in segments:
        unit = F.normalize(nodes[start:start + size].float(), dim=-1)  # (S, C)
        nearest = torch.cdist(unit, unit).topk(k, largest=False).indices  # (S, k)
        edges |= {(start + int(j), start + i) for i, row in enumerate(nearest) for j in row}
        start += size
    return edges


def dense_message_passing(layer: SkeletonMessagePassing, x: torch.Tensor,
                          adjacency: torch.Tensor) -> torch.Tensor:
    """`layer`'s computation from a dense `adjacency (N, N)`, `adjacency[i, j] = 1` for an edge
    j -> i ."""
    h = layer.norm(x)
    degree = adjacency.sum(1, keepdim=True).clamp(min=1)  # (N, 1)
    return layer.combine(x, h, adjacency @ layer.message(h) / degree)


def _person(seed: int, present=range(NUM_JOINTS)) -> torch.Tensor:
    # (17, 3) random joints in a 64 x 64 image; only `present` have confidence 1
    g = torch.Generator().manual_seed(seed)
    kp = MISSING.repeat(NUM_JOINTS, 1)
    for j in present:
        kp[j] = torch.cat([torch.rand(2, generator=g) * 60 + 2, torch.ones(1)])
    return kp


@pytest.fixture
def mixed_pose():
    """3 images: no person; one full person; a full person, a one-joint person and a person with
    only the left arm and hip (plus a padding row)."""
    keypoints = MISSING.repeat(3, 4, NUM_JOINTS, 1)  # (B, P, 17, 3)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    keypoints[1, 0] = _person(1)
    keypoints[2, 0] = _person(2)
    keypoints[2, 1] = _person(3, present=[0])
    keypoints[2, 2] = _person(4, present=[5, 7, 9, 11])
    mask[1, 0] = mask[2, :3] = True
    return keypoints, mask


def _dense_adjacency(keypoints, mask, level: str) -> torch.Tensor:
    # A[i, j] = 1 for an edge j -> i, built person by person without the graph code
    blocks = []
    for b in range(keypoints.shape[0]):
        for p in range(keypoints.shape[1]):
            present = [j for j in range(NUM_JOINTS) if mask[b, p] and keypoints[b, p, j, 2] > 0.02]
            if len(present) < 2:
                continue
            if level == "parts":
                present, bones = sorted({PART_OF_JOINT[j] for j in present}), PART_BONES
            else:
                bones = BONES
            a = torch.eye(len(present))
            for u, v in bones:
                if u in present and v in present:
                    i, j = present.index(u), present.index(v)
                    a[i, j] = a[j, i] = 1
            blocks.append(a)
    return torch.block_diag(*blocks)


def test_batching_with_zero_one_and_several_people(mixed_pose):
    graph = build_skeleton_graph(*mixed_pose)
    assert graph.joints.batch_size == graph.parts.batch_size == graph.num_bodies == 3
    assert graph.joints.batch_num_nodes().tolist() == [17, 17, 4]
    assert graph.parts.batch_num_nodes().tolist() == [5, 5, 2]
    # Partial person: bones 5-7, 7-9, 5-11 both ways + 4 self loops; parts: arm-leg + 2 loops.
    assert graph.joints.batch_num_edges().tolist() == [2 * 18 + 17] * 2 + [10]
    assert graph.parts.batch_num_edges().tolist() == [2 * 6 + 5] * 2 + [4]
    assert graph.body_image.tolist() == [1, 2, 2]
    assert torch.bincount(graph.joint_image, minlength=3).tolist() == [0, 17, 21]
    assert graph.bones.shape == (18 + 18 + 3, 2)
    out = SkeletonHierarchy(8)(graph, torch.randn(graph.num_joints, 8))
    assert out.shape == (38, 8) and torch.isfinite(out).all()


def test_batch_without_people_has_no_nodes():
    keypoints = MISSING.repeat(2, 1, NUM_JOINTS, 1)
    graph = build_skeleton_graph(keypoints, torch.zeros(2, 1, dtype=torch.bool))
    assert graph.num_joints == graph.num_parts == graph.num_bodies == graph.bones.shape[0] == 0
    empty = build_skeleton_graph(torch.zeros(2, 0, NUM_JOINTS, 3), torch.zeros(2, 0, dtype=bool))
    assert empty.num_joints == 0 and empty.num_images == 2


@pytest.mark.parametrize("level", ["joints", "parts"])
def test_message_passing_matches_dense_reference(mixed_pose, level):
    graph = build_skeleton_graph(*mixed_pose)
    g = graph.joints if level == "joints" else graph.parts
    layer = SkeletonMessagePassing(8)
    x = torch.randn(g.num_nodes(), 8)
    adjacency = _dense_adjacency(*mixed_pose, level)
    torch.testing.assert_close(layer(g, x), dense_message_passing(layer, x, adjacency))


@pytest.mark.parametrize("level", ["joints", "parts"])
def test_edge_list_message_passing_matches_dgl(mixed_pose, level):
    graph = build_skeleton_graph(*mixed_pose)  # 3 people in 2 images, one partial
    g = graph.joints if level == "joints" else graph.parts
    layer = SkeletonMessagePassing(8)
    x = torch.randn(g.num_nodes(), 8, requires_grad=True)
    outs, grads = [], []
    for use_dgl in (True, False):
        out = layer(g, x, use_dgl=use_dgl)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *layer.parameters()]))
    torch.testing.assert_close(outs[1], outs[0])
    for torch_grad, dgl_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(torch_grad, dgl_grad)
    edges = graph.joint_edges if level == "joints" else graph.part_edges
    assert torch.equal(edges, torch.stack(g.edges()))  # the list the hierarchy passes
    torch.testing.assert_close(layer(g, x, edges), outs[0])


def test_skeleton_graph_stays_on_cpu_with_indices_and_passing_off_it(mixed_pose):
    graph = build_skeleton_graph(*mixed_pose, device="meta")
    assert graph.joints.device == graph.parts.device == torch.device("cpu")
    assert {t.device.type for t in (graph.joint_xy, graph.joint_id, graph.joint_part,
                                    graph.joint_image, graph.part_id, graph.part_body,
                                    graph.body_image, graph.bones, graph.joint_edges,
                                    graph.part_edges)} == {"meta"}
    out = SkeletonHierarchy(8).to("meta")(graph, torch.randn(38, 8, device="meta"))
    assert out.shape == (38, 8) and out.device.type == "meta"
    resnet = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4)
    stage = SkeletonPGIStage(resnet, node_dim=8).to("meta")
    out = stage(torch.randn(3, 8, 16, 16, device="meta"), torch.randn(3, 12, device="meta"),
                (graph, (64, 64)))
    assert out.shape == (3, 16, 16, 16)


def test_knn_matches_brute_force():
    nodes = torch.randn(3 * 30, 8)
    graph = knn_pixel_graph(nodes, 9, [30, 30, 30])
    src, dst = graph.edges()
    assert set(zip(src.tolist(), dst.tolist())) == brute_force_knn(nodes, 9, [30, 30, 30])
    assert (graph.in_degrees() == 9).all()
    assert graph.has_edges_between(torch.arange(90), torch.arange(90)).all()  # self included


@pytest.mark.parametrize("size", [5, 2])  # 2 x 2 has fewer pixels than k
def test_feature_graph_block_keeps_shape(size):
    block = FeatureGraphBlock(8, k=9)
    x = torch.randn(2, 8, size, size, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert block.edge_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("segments", [[30, 30, 30], [20, 40, 30], [5, 30]])  # [5, 30]: k -> 5
@pytest.mark.parametrize("max_elements", [2 ** 26, 50])  # 50: a few query rows at a time
def test_torch_knn_matches_brute_force_and_dgl(segments, max_elements):
    nodes = torch.randn(sum(segments), 8)
    k = min(9, *segments)
    neighbours = knn_neighbours(nodes, 9, segments, max_elements=max_elements)
    assert neighbours.shape == (sum(segments), k)
    edges = {(int(j), i) for i, row in enumerate(neighbours) for j in row}
    assert edges == brute_force_knn(nodes, k, segments)
    src, dst = knn_pixel_graph(nodes, k, segments).edges()
    assert edges == set(zip(src.tolist(), dst.tolist()))
    assert (neighbours[:, 0] == torch.arange(sum(segments))).all()  # self is the nearest


def test_torch_edge_conv_matches_dgl_and_the_released_definition():
    conv = torch.nn.Conv2d(16, 8, 1, groups=4)  # the release's grouped EdgeConv weight
    nodes = torch.randn(60, 8, requires_grad=True)
    neighbours = knn_neighbours(nodes, 5, [30, 30])
    graph = knn_pixel_graph(nodes, 5, [30, 30])
    outs, grads = [], []
    for out in (edge_conv_dgl(conv, graph, nodes),
                edge_conv_from_neighbours(conv, nodes, neighbours)):
        outs.append(out)
        grads.append(torch.autograd.grad(out.sin().sum(), [nodes, *conv.parameters()]))
    torch.testing.assert_close(outs[1], outs[0])
    for torch_grad, dgl_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(torch_grad, dgl_grad)
    x_i = nodes[:, None].expand(-1, 5, -1)  # (N, k, C)
    x_j = nodes[neighbours]
    pairs = torch.cat([x_i, x_j - x_i], -1).permute(0, 2, 1)[..., None]  # (N, 2C, k, 1)
    reference = F.relu(conv(pairs)).amax((2, 3))  # max_j ReLU(W [x_i, x_j - x_i] + b)
    torch.testing.assert_close(outs[1], reference)


@pytest.mark.parametrize("size", [5, 2])
def test_feature_graph_block_torch_path_matches_dgl(size):
    block = FeatureGraphBlock(8, k=9)
    x = torch.randn(2, 8, size, size)
    outs, grads = [], []
    for use_dgl in (True, False):
        out = block(x, use_dgl=use_dgl)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), list(block.parameters())))
    torch.testing.assert_close(outs[1], outs[0])
    for torch_grad, dgl_grad in zip(grads[1], grads[0]):  # proj.bias: 0 (BN follows) up to noise
        torch.testing.assert_close(torch_grad, dgl_grad, rtol=1e-4, atol=1e-4)
    assert block.edge_conv.weight.shape == (8, 4, 1, 1)  # groups 4, as released
    out = block.to("meta")(torch.randn(2, 8, size, size, device="meta"))  # torch path off CPU
    assert out.shape == x.shape and out.device.type == "meta"


def test_grid_mapping_and_bilinear_sampling():
    # Pixel centres line up: image pixel 1.5 of a 64-wide image is cell 0's centre at 16 wide.
    xy = torch.tensor([[1.5, 61.5], [30.0, 10.0]])
    grid = to_feature_grid(xy, (64, 64), (16, 16))
    torch.testing.assert_close(grid[0], torch.tensor([0.0, 15.0]))
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    feature = torch.stack([torch.stack([xs, ys]), torch.stack([-xs, ys])])  # (2, 2, 16, 16)
    sampled = sample_at_points(feature, grid, torch.tensor([0, 1]))  # bilinear of linear maps
    torch.testing.assert_close(sampled, torch.stack([grid[0], grid[1] * torch.tensor([-1, 1])]))


def test_splat_covers_joints_and_bones(mixed_pose):
    graph = build_skeleton_graph(*mixed_pose)
    grid_xy = to_feature_grid(graph.joint_xy, (64, 64), (16, 16))
    weights = splat_weights(graph, grid_xy, (16, 16), sigma=1.0)  # (Nj, 256)
    assert weights.shape == (graph.num_joints, 256) and (weights >= 0).all()
    field = splat(torch.ones(graph.num_joints, 3), weights, graph.joint_image, 3, (16, 16))
    assert field.shape == (3, 3, 16, 16)
    assert (field[0] == 0).all()  # no person, nothing splatted
    assert torch.isclose(field[1:], torch.ones(())).any() and field.max() <= 1 + 1e-6
    # A bone's midpoint gets weight from its two ends, though neither joint is there.
    a, b = graph.bones[0]
    mid = ((grid_xy[a] + grid_xy[b]) / 2).round().long().clamp(0, 15)
    pixel = int(mid[1] * 16 + mid[0])
    assert weights[a, pixel] + weights[b, pixel] > 0.3


def test_skeleton_stage_adds_nothing_to_images_without_people(mixed_pose):
    resnet = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4)
    stage = SkeletonPGIStage(resnet, node_dim=8, sigma=1.0)
    torch.nn.init.normal_(stage.out_conv.weight, std=0.1)
    x, temb = torch.randn(3, 8, 16, 16), torch.randn(3, 12)
    out = stage(x, temb, (build_skeleton_graph(*mixed_pose), (64, 64)))
    plain = resnet(x, temb)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], plain[0])
    assert not torch.allclose(out[1:], plain[1:])
