"""The GPU battery (tools/gpu/gpu_check.py): its CPU dry run writes every section's figures; the
goals' verdicts; the wheel list (tools/gpu/gpu_wheels.py). And the CUDA tests it runs (`gpu`
marker): the PGI's torch paths on CUDA against DGL on the CPU, the perception loss's gradient,
a 2-step SD-1.5-shaped fit and sample through the CLI."""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os

import pytest
import torch

from tools.gpu import gpu_wheels
from tools.gpu.gpu_check import main as gpu_check
from tools.gpu.gpu_report import summary

# the slow CPU end-to-end test's SD 1.5 folder fixture (random SD 1.5 weights), shared
sd15_folder = importlib.import_module("test_sd15_end_to_end").sd15_folder


def test_cpu_dry_run_runs_every_section(tmp_path, one_thread):
    """`--device cpu --tiny`: the pytest part reports its CUDA tests skipped, the step /
    sampling / evaluation benchmarks run at tiny shapes and write the json and md."""
    out = tmp_path / "out"
    code = gpu_check(["--device", "cpu", "--tiny", "--out", str(out), "--methods", "controlnet",
                      "grpose_skeleton"])
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["errors"] == {} and code == 0
    tests = results["sections"]["pytest"]
    assert "tests/test_gpu_check.py" in tests["files"] and "tests/test_methods.py" in tests["files"]
    assert tests["counts"]["skipped"] > 0 and tests["counts"]["passed"] == 0
    assert tests["counts"]["failed"] == 0 and "needs CUDA" in tests["skip_reasons"]
    settings = results["sections"]["step"]["settings"]
    assert set(settings) == {"batch2", "batch2_checkpointing", "largest_checkpointing",
                             "batch2_compiled_unet"}
    assert settings["largest_checkpointing"]["batch"] == 3
    for s in settings.values():
        assert set(s["methods"]) == {"controlnet", "grpose_skeleton"}
        for r in s["methods"].values():
            assert r["s_per_step"] > 0 and r["flops_per_step"] > 0 and 0 < r["mfu"]
        assert s["methods"]["controlnet"]["x_controlnet"] == 1.0
    # checkpointing recomputes the forward pass: more FLOPs for the same step
    assert (settings["batch2_checkpointing"]["methods"]["controlnet"]["flops_per_step"]
            > settings["batch2"]["methods"]["controlnet"]["flops_per_step"])
    sample = results["sections"]["sample"]["methods"]
    assert set(sample) == {"controlnet", "grpose_skeleton", "diffusers_controlnet_pipeline"}
    assert all(r["images_per_s"] > 0 for r in sample.values())
    (det,) = results["sections"]["eval"]["detectors"].values()
    assert det["num_images"] == 6 and det["images_per_s"] > 0
    assert {"ap", "cap", "fid", "kid", "clip"} <= set(det["metrics"])
    md = (out / "gpu_check.md").read_text()
    assert "## Summary" in md and "diffusers_controlnet_pipeline" in md
    assert all(r["verdict"] == "-" for r in results["summary"])  # a dry run judges nothing


def test_summary_judges_each_goal():
    step = {"batch8": {"methods": {"controlnet": dict(x_controlnet=1.0, mfu=0.45),
                                   "grpose_skeleton": dict(x_controlnet=1.2, mfu=0.3)}}}
    results = dict(sections=dict(
        pytest=dict(counts=dict(passed=5, failed=0, skipped=1)), step=dict(settings=step),
        sample=dict(methods={"controlnet": dict(images_per_s=2.0),
                             "diffusers_controlnet_pipeline": dict(images_per_s=1.9)}),
        eval=dict(detectors={"hrnet": dict(num_images=4750, resolution=512, seconds=130.0)})),
        errors={"sample": "RuntimeError: x"})
    rows = {r["figure"]: r for r in summary(results, argparse.Namespace(tiny=False))}
    verdicts = {k: r["verdict"] for k, r in rows.items()}
    assert verdicts == {
        "gpu tests passed / failed / skipped": "met",
        "step batch8: GRPose (skeleton) s/step x ControlNet": "NOT met",
        "step batch8: controlnet MFU": "met", "step batch8: grpose_skeleton MFU": "NOT met",
        "sampling: ControlNet images/s x diffusers pipeline": "met",
        "evaluation (hrnet): s for 4750 images at 512^2": "NOT met", "section sample": "NOT met"}
    assert rows["sampling: ControlNet images/s x diffusers pipeline"]["value"] == \
        pytest.approx(2.0 / 1.9, abs=1e-3)


def test_wheel_list_reads_the_pins_and_prunes_other_versions(tmp_path):
    pins = tmp_path / "constraints.txt"
    pins.write_text("# header\ndiffusers==0.42.1\nopen_clip_torch==3.3.0\n")
    assert gpu_wheels.requirements(["diffusers", "open-clip-torch"], str(pins)) == [
        "diffusers==0.42.1", "open-clip-torch==3.3.0"]
    with pytest.raises(SystemExit, match="constraints.txt: no pinned version for \\['dgl'\\]"):
        gpu_wheels.requirements(["dgl"], str(pins))
    for name in ("diffusers-0.42.1-py3-none-any.whl", "diffusers-0.40.0-py3-none-any.whl",
                 "open_clip_torch-3.3.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    removed = gpu_wheels.prune(str(tmp_path), ["diffusers==0.42.1", "open_clip_torch==3.3.0"])
    assert removed == ["diffusers-0.40.0-py3-none-any.whl"]
    # every wheel the GPU machine needs is pinned in the project's constraints
    assert len(gpu_wheels.requirements(gpu_wheels.WHEELS + gpu_wheels.OPTIONAL,
                                       "constraints.txt")) == 17


# -- point 4's faster PGI path (dense means, splat matrix) equals the edge-list one ------------
def test_dense_means_equal_the_edge_list_path():
    """The hierarchy with its dense means (built up to DENSE_MAX_NODES joints) against the
    same graph with them dropped (the edge-list / index path, used beyond that size)."""
    import dataclasses

    from test_graph import _person

    from grpose.graph.skeleton import SkeletonHierarchy, build_skeleton_graph
    keypoints = torch.stack([torch.stack([_person(1), _person(2), _person(5, present=[0])]),
                             torch.stack([_person(3, present=[5, 7, 9, 11]), _person(4),
                                          _person(6)])])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    dense = build_skeleton_graph(keypoints, mask)
    assert dense.joint_mean.shape == (dense.num_joints,) * 2
    sparse = dataclasses.replace(dense, joint_mean=None, part_mean=None, joint_pool=None,
                                 part_pool=None)
    torch.manual_seed(0)
    hierarchy = SkeletonHierarchy(16)
    x = torch.randn(dense.num_joints, 16, requires_grad=True)
    outs = []
    for graph in (dense, sparse):
        out = hierarchy(graph, x)
        outs.append((out, torch.autograd.grad(out.square().sum(), [x, *hierarchy.parameters()])))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)
    assert dense.joints.num_nodes() == dense.num_joints  # DGL's graph, built on first use


# -- CUDA (the `gpu` marker; skipped without CUDA) ---------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("size", [5, 8])
def test_feature_graph_torch_path_on_cuda_equals_dgl_on_cpu(size):
    from grpose.graph.feature import FeatureGraphBlock
    torch.manual_seed(0)
    block = FeatureGraphBlock(16, k=9).eval()
    x = torch.randn(3, 16, size, size)
    want = block(x)  # CPU: DGL's kNN graph and message passing
    got = copy.deepcopy(block).cuda()(x.cuda())  # CUDA: torch kNN and edge max
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("level", ["joints", "parts"])
def test_skeleton_passing_on_cuda_equals_dgl_on_cpu(level):
    from grpose.graph.skeleton import SkeletonMessagePassing, build_skeleton_graph
    from test_graph import _person
    keypoints = torch.stack([torch.stack([_person(1), _person(2)]),
                             torch.stack([_person(3, present=[5, 7, 9, 11]), _person(4)])])
    mask = torch.ones(2, 2, dtype=torch.bool)
    cpu, cuda = build_skeleton_graph(keypoints, mask), build_skeleton_graph(keypoints, mask,
                                                                            "cuda")
    layer = SkeletonMessagePassing(16)
    g = cpu.joints if level == "joints" else cpu.parts
    x = torch.randn(g.num_nodes(), 16, requires_grad=True)
    want = layer(g, x, use_dgl=True)
    want_grad, = torch.autograd.grad(want.square().sum(), x)
    xc = x.detach().cuda().requires_grad_()
    edges = cuda.joint_edges if level == "joints" else cuda.part_edges
    got = copy.deepcopy(layer).cuda()(g, xc, edges)
    got_grad, = torch.autograd.grad(got.square().sum(), xc)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_grad.cpu(), want_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["grpose_skeleton", "grpose_feature"])
def test_grpose_on_cuda_equals_the_cpu_in_fp32(tiny_parts, tiny_inputs, name,
                                               perturb_zero_parameters):
    from grpose.diffusion.denoiser import predict_eps
    from grpose.methods import method_from_config
    torch.manual_seed(0)
    method = method_from_config(f"configs/method/tiny/{name}.yaml")
    unet = copy.deepcopy(tiny_parts[0])
    method.attach(unet)
    perturb_zero_parameters(method)
    noisy, text, cond = tiny_inputs
    t = torch.tensor([10, 400, 900])
    method.eval()
    with torch.no_grad():
        want = predict_eps(unet, method, noisy, t, text, cond)  # feature graph: DGL on the CPU
        unet.cuda(), method.cuda()
        got = predict_eps(unet, method, noisy.cuda(), t.cuda(), text.cuda(), cond.to("cuda"))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_perception_loss_gradient_on_cuda(tiny_parts, tiny_batch):
    from test_perception import step_for, tiny_pose_net

    from grpose.diffusion import PoseDiffusionModule
    from grpose.diffusion.components import noise_scheduler
    from grpose.diffusion.losses import PosePerceptionLoss
    from grpose.methods import ControlNet
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    term = PosePerceptionLoss(network=tiny_pose_net(), weight=1.0, target="pose")
    m = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                            losses=[term]).cuda()
    m.train()
    batch = copy.copy(tiny_batch)
    batch.image = batch.image.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, logs = term(step_for(m, batch, torch.tensor([5, 100, 150], device="cuda")))
    assert torch.isfinite(loss) and loss > 0 and "perception" in logs
    loss.backward()
    grads = [p.grad for p in m.method.parameters() if p.grad is not None]
    assert grads and all(g.is_cuda for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in term.network.parameters())


@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_sd15_fit_and_sample_through_the_cli_on_cuda(tmp_path, sd15_folder):
    """2 bf16 steps of ControlNet on SD 1.5's random-init networks at 512^2, then `predict`
    (2 DDIM steps) from the checkpoint, both through `python -m grpose`'s CLI on the GPU."""
    from conftest import write_humanart
    from test_sd15_end_to_end import EVAL_IDS, ITEMS, run_args, sd15_config

    from grpose.cli import main
    root = tmp_path / "HumanArt"
    for split in ("training", "validation"):
        write_humanart(root, "mapping", ITEMS, split)
    (root / "eval_ids.txt").write_text("\n".join(map(str, EVAL_IDS)) + "\n")
    base, run = sd15_config(sd15_folder, tmp_path / "sd15.yaml"), tmp_path / "runs"
    gpu = ["--trainer.accelerator=gpu", "--trainer.precision=bf16-mixed",
           "--data.init_args.train.init_args.resolution=512",
           "--data.init_args.val.init_args.resolution=512", f"--trainer.default_root_dir={run}"]
    cli = main(["fit", *run_args(base, root, "mapping", *gpu, "--trainer.max_steps=2",
                                 f"--trainer.logger.init_args.save_dir={run}",
                                 "--trainer.limit_val_batches=0")])
    assert cli.trainer.global_step == 2 and cli.model.device.type == "cuda"
    ckpt = os.path.join(cli.trainer.log_dir, "checkpoints", "last.ckpt")
    del cli
    torch.cuda.empty_cache()
    out = tmp_path / "predict"
    main(["predict", *run_args(base, root, "mapping", *gpu, f"--ckpt_path={ckpt}",
                               f"--predict_writer.out_dir={out}", "--trainer.logger=false",
                               "--model.init_args.sampling.num_inference_steps=2",
                               f"--data.init_args.val.init_args.eval_list={root}/eval_ids.txt")])
    assert sorted(n for n in os.listdir(out) if not n.startswith("grid_")) == sorted(
        f"{i}.png" for i in EVAL_IDS)

