"""The pose-transfer comparison shortened to seconds (`--quick`): every stage, the report's
rows and columns, the grid, stage reuse; and its pieces on hand-made inputs."""
from __future__ import annotations

import json
import os

import pytest
import torch

from grpose.demo import main
from grpose.demo.transfer import QUESTIONS, TransferConfig, answers, parse, plan
from grpose.demo.transfer_scoring import CEILING, FLOOR, feature_distance
from grpose.demo.transfer_stages import GUIDED
from grpose.methods import TRANSFER_METHODS


def test_the_plan_has_every_method_per_seed_and_the_ceiling_and_floor():
    cfg = TransferConfig()
    rows, seeds = parse(cfg)
    assert rows == [*TRANSFER_METHODS, GUIDED] and seeds == [0, 1, 2]
    names = [t.name for t in plan(cfg, rows, seeds)]
    for seed in seeds:
        assert all(f"{m}-s{seed}" in names for m in TRANSFER_METHODS)
        assert all(f"score/{r}-s{seed}" in names for r in rows)
    assert f"score/{CEILING}" in names and f"score/{FLOOR}" in names
    guided = next(t for t in plan(cfg, rows, seeds) if t.name == f"score/{GUIDED}-s1")
    assert guided.after["method"] == "reposedm-s1" and "field" in guided.after
    with pytest.raises(ValueError, match="unknown"):
        parse(TransferConfig(methods="pose_only,controlnet"))


def test_answers_say_better_or_worse_and_inside_or_outside_the_spread():
    keys = ("ssim_gaussian", "colour_error", "fid", "ap")
    means = {"pose_only": dict.fromkeys(keys, 0.5),
             "source_unaligned": {"ssim_gaussian": 0.6, "colour_error": 0.55, "fid": 0.5,
                                  "ap": 0.45}}
    stds = {"pose_only": dict.fromkeys(keys, 0.01), "source_unaligned": dict.fromkeys(keys, 0.01)}
    [line] = answers(means, stds, ["pose_only", "source_unaligned"], 3)
    assert line.startswith(f"- {QUESTIONS[0][2]}:")
    assert "SSIM (Gaussian) 0.600 vs 0.500 (better, outside" in line
    assert "colour error 0.550 vs 0.500 (worse, outside" in line
    assert "FID 0.500 vs 0.500 (worse, inside" in line or "(better, inside" in line


def test_feature_distance_is_zero_for_the_same_images_and_grows_with_change():
    from grpose.pose import PoseNetwork
    net = PoseNetwork().eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        same = feature_distance(net, x, x)
        near = feature_distance(net, x, (x + 0.05 * torch.randn_like(x)).clamp(-1, 1))
        far = feature_distance(net, x, torch.rand_like(x) * 2 - 1)
    assert same.abs().max() < 1e-6 and (near < far).all()


@pytest.mark.slow
def test_quick_compare_transfer_end_to_end_and_reuse(tmp_path):
    out = tmp_path / "ct"
    results = main(["compare-transfer", "--quick", "--out", str(out), "--seeds", "0,1"])
    rows = results["methods"]
    assert list(rows) == [CEILING, FLOOR, *TRANSFER_METHODS, GUIDED]
    for row in (*TRANSFER_METHODS, GUIDED):
        assert set(results["per_seed"][row]) == {0, 1}
    cols = {"ssim_gaussian", "ssim_uniform", "psnr", "feature_distance", "fid", "ap",
            "colour_error"}
    assert cols <= set(rows[FLOOR]) and "lpips" not in rows[FLOOR]  # no AlexNet file: absent
    text = (out / "results.md").read_text()
    assert "| row | SSIM (Gaussian) | SSIM (51 uniform) |" in text and "alignment vs" in text
    assert os.path.isfile(out / "grid.png")
    saved = json.loads((out / "results.json").read_text())
    assert saved["answers"] == results["answers"]
    before = {p: os.path.getmtime(p) for p in out.rglob("stage.json")}
    main(["compare-transfer", "--quick", "--out", str(out), "--seeds", "0,1"])
    assert before == {p: os.path.getmtime(p) for p in out.rglob("stage.json")}  # all reused
