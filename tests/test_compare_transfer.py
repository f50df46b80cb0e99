"""The pose-transfer comparison shortened to seconds (`--quick`): every stage, the report's
rows and columns, the grid, the bundles, stage reuse; and its pieces on hand-made inputs."""
from __future__ import annotations

import json
import os

import pytest
import torch

from grpose.demo import main
from grpose.demo.transfer import TransferConfig, demo_config, parse, plan
from grpose.demo.transfer_report import answers, compare
from grpose.demo.transfer_scoring import (BACKGROUND, CEILING, FLOOR, REFERENCES, WARP,
                                          feature_distance)
from grpose.demo.transfer_stages import GUIDED
from grpose.methods import TRANSFER_METHODS


def test_the_plan_has_every_method_per_seed_and_the_reference_rows():
    cfg = TransferConfig()
    rows, seeds = parse(cfg)
    assert rows == [*TRANSFER_METHODS, GUIDED] and seeds == [0, 1, 2]
    tasks = plan(cfg, rows, seeds)
    names = [t.name for t in tasks]
    for seed in seeds:
        assert all(f"{m}-s{seed}" in names for m in TRANSFER_METHODS)
        assert all(f"score/{r}-s{seed}" in names for r in rows)
    assert all(f"score/{r}" in names for r in (CEILING, FLOOR, BACKGROUND, WARP))
    guided = next(t for t in tasks if t.name == f"score/{GUIDED}-s1")
    assert guided.after["method"] == "reposedm-s1" and "field" in guided.after
    with pytest.raises(ValueError, match="unknown"):
        parse(TransferConfig(methods="pose_only,controlnet"))


def test_the_shared_stages_are_the_pose_demos_when_their_settings_are():
    assert demo_config(TransferConfig()).out == "runs/demo"  # what `make demo` trained
    other = TransferConfig(out="x", vae_steps=10)
    assert demo_config(other).out == os.path.join("x", "shared")  # never overwrites runs/demo
    assert demo_config(TransferConfig(demo_out="elsewhere", vae_steps=10)).out == "elsewhere"
    assert demo_config(TransferConfig(out="x", pairs_train=10)).out == "runs/demo"


def test_answers_are_computed_from_the_table():
    keys = ("person_ssim", "person_feature_distance", "colour_error")
    means = {CEILING: {"person_ssim": 0.8, "person_feature_distance": 0.1, "colour_error": 10.},
             FLOOR: {"person_ssim": 0.3, "person_feature_distance": 0.5, "colour_error": 60.},
             BACKGROUND: {"person_ssim": 0.4, "person_feature_distance": 0.6, "colour_error": 70.},
             "pose_only": {"person_ssim": 0.4, "person_feature_distance": 0.4,
                           "colour_error": 50.},
             "reposedm": {"person_ssim": 0.5, "person_feature_distance": 0.3,
                          "colour_error": 30.}}
    stds = {r: dict.fromkeys(keys, 0.0) for r in means}
    stds["reposedm"]["colour_error"] = 25.0  # inside the spread: not "beats"
    lines = answers(means, stds, ["pose_only", "reposedm"])
    assert lines[0].startswith(f"- The VAE ceiling beats '{BACKGROUND}'")
    assert lines[1].startswith(f"- The VAE ceiling beats '{FLOOR}'")
    assert lines[2].startswith("- reposedm does not beat pose_only")
    assert "colour error 30 vs 50 (better, inside the spread 25)" in lines[2]
    assert lines[3].startswith("- The best source method by the person distance, reposedm, "
                               f"beats '{FLOOR}'")
    assert compare(means, stds, "pose_only", "reposedm", "colour_error")[:2] == (False, False)


def test_feature_distance_is_zero_for_the_same_images_and_grows_with_change():
    from grpose.pose import PoseNetwork
    net = PoseNetwork().eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        same = feature_distance(net, x, x)
        near = feature_distance(net, x, (x + 0.05 * torch.randn_like(x)).clamp(-1, 1))
        far = feature_distance(net, x, torch.rand_like(x) * 2 - 1)
    assert same.abs().max() < 1e-6 and (near < far).all()


def test_bad_settings_give_one_line():
    with pytest.raises(SystemExit, match="error: --methods: unknown"):
        main(["compare-transfer", "--methods", "pose_only,nope"])


@pytest.mark.slow
def test_quick_compare_transfer_end_to_end_and_reuse(tmp_path):
    out = tmp_path / "ct"
    results = main(["compare-transfer", "--quick", "--out", str(out), "--seeds", "0,1"])
    rows = results["methods"]
    assert list(rows) == [*REFERENCES, *TRANSFER_METHODS, GUIDED]
    assert results["shared"] == str(out / "shared")
    for row in (*TRANSFER_METHODS, GUIDED):
        assert set(results["per_seed"][row]) == {0, 1}
    cols = {"person_ssim", "person_feature_distance", "colour_error", "ssim_gaussian",
            "ssim_uniform", "psnr", "feature_distance", "fid", "ap"}
    assert cols <= set(rows[FLOOR]) and "lpips" not in rows[FLOOR]  # no AlexNet file: absent
    assert set(results["flow"]) == {0, 1}
    text = (out / "results.md").read_text()
    assert "| row | person SSIM |" in text and "## By pose change" in text
    assert os.path.isfile(out / "grid.png")
    assert len(results["bundles"]) == 2 * len(TRANSFER_METHODS)
    saved = json.loads((out / "results.json").read_text())
    assert saved["answers"] == results["answers"]
    before = {p: os.path.getmtime(p) for p in out.rglob("stage.json")}
    main(["compare-transfer", "--quick", "--out", str(out), "--seeds", "0,1"])
    assert before == {p: os.path.getmtime(p) for p in out.rglob("stage.json")}  # all reused
    # --train-unet: the UNet trains with the method, is saved beside it and bundled with it
    unet_out = tmp_path / "unet"
    main(["compare-transfer", "--quick", "--out", str(unet_out), "--demo-out", str(out / "shared"),
          "--seeds", "0", "--methods", "pose_only", "--train-unet"])
    assert os.path.isfile(unet_out / "pose_only-s0" / "unet.pt")
    bundle = json.loads((unet_out / "bundles" / "pose_only-s0" / "bundle.json").read_text())
    assert bundle["trained_unet"] is True


def test_the_command_is_found_after_flags_and_unread_settings_are_not_offered(monkeypatch):
    import grpose.demo as demo
    seen = {}
    monkeypatch.setattr("grpose.demo.transfer.run", lambda cfg: seen.setdefault("cfg", cfg))
    demo.main(["--out", "somewhere", "compare-transfer", "--seeds", "1"])
    assert seen["cfg"].out == "somewhere" and seen["cfg"].seeds == "1"  # not the pose demo
    for flag in ("--kb-steps", "--timestep-sampling", "--num-tune"):
        with pytest.raises(SystemExit):
            demo.main(["compare-transfer", flag, "3"])


def test_the_keypoint_warp_row_beats_copying_the_source_on_the_person():
    from grpose.data.pairs import collate_pair_samples
    from grpose.data.synthetic_pairs import SyntheticPairs
    from grpose.demo.transfer_scoring import reference_images
    from grpose.metrics.transfer import masked_ssim_per_image, part_colour_errors
    ds = SyntheticPairs(16, seed=3, split="validation", resolution=64, render_scale=0.35)
    batch = collate_pair_samples([ds[i] for i in range(16)])
    person, target = batch.target_parts.any(1, keepdim=True), (batch.image + 1) / 2
    scores = {}
    for row in (WARP, FLOOR, BACKGROUND):
        images = (reference_images(row, {})(batch).clamp(-1, 1) + 1) / 2
        scores[row] = (float(masked_ssim_per_image(images, target, person).nanmean()),
                       float(part_colour_errors(images, target, batch.target_parts).nanmean()))
    assert torch.equal(reference_images(BACKGROUND, {})(batch), batch.target_background)
    assert scores[WARP][0] > scores[FLOOR][0] + 0.1 and scores[WARP][1] < scores[FLOOR][1] - 20
