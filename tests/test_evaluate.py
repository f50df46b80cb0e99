"""The standalone evaluator on a folder of images, and metrics in the diffusion validation loop."""
import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from grpose.callbacks.images import to_uint8
from grpose.data import DataError, SyntheticPoseDataset
from grpose.metrics.evaluate import evaluate_folder, image_name
from grpose.metrics.suite import GenerationMetrics
from grpose.pose.detector import PoseDetector
from tools.commands.evaluate import main as evaluate_main


class LookupDetector(PoseDetector):
    """Returns the people registered for an image (by its bytes): a perfect or scripted detector."""

    def __init__(self, table: dict):
        self.table = table

    def __call__(self, images):
        out = []
        for img in to_uint8(images):
            people = self.table.get(img.tobytes(), torch.zeros(0, 17, 3))
            out.append({"keypoints": people, "scores": torch.ones(len(people))})
        return out


def write_real_as_generated(ds, folder, skip=()):
    table = {}
    for i in range(len(ds)):
        s = ds[i]
        if i in skip:
            continue
        img = to_uint8(s.image[None])[0]
        Image.fromarray(img).save(folder / f"{image_name(s.meta)}.png")
        table[img.tobytes()] = s.keypoints
    return table


def test_perfect_images_score_perfectly_per_scenario(tmp_path):
    ds = SyntheticPoseDataset(12, seed=2, split="val", resolution=48)
    table = write_real_as_generated(ds, tmp_path)
    res = evaluate_folder(str(tmp_path), ds, LookupDetector(table), batch_size=5)
    scenarios = {ds[i].meta["scenario"] for i in range(len(ds))}
    assert set(res["per_scenario"]) == scenarios and res["num_images"] == 12
    for r in res["per_scenario"].values():
        assert r["ap"] == pytest.approx(100) and r["pce"] == 0
    assert res["mean"]["ap"] == pytest.approx(100) and res["all"]["cap"] == pytest.approx(100)


def test_missing_images_raise_or_skip_and_cli_writes_files(tmp_path):
    ds = SyntheticPoseDataset(6, seed=3, split="val", resolution=48)
    gen = tmp_path / "gen"
    gen.mkdir()
    table = write_real_as_generated(ds, gen, skip={2})
    with pytest.raises(DataError, match="validation_000002.png: generated image not found"):
        evaluate_folder(str(gen), ds, LookupDetector(table))
    out = tmp_path / "out"
    res = evaluate_main(str(gen), ds, LookupDetector(table), on_missing="skip", out=str(out))
    assert res["missing"] == 1 and res["num_images"] == 5
    saved = json.loads((out / "results.json").read_text())
    assert saved["mean"]["ap"] == pytest.approx(100)
    table_md = (out / "results.md").read_text()
    assert "| scenario | AP | CAP | PCE |" in table_md and "**mean**" in table_md


def test_command_line_as_make_eval_gives_it(tmp_path):
    """`tools/commands/evaluate.py --config C --images DIR`, a field of the config's dataset
    overridden."""
    from tools.commands.evaluate import cli
    ds = SyntheticPoseDataset(4, seed=3, split="val", resolution=48)
    gen = tmp_path / "gen"
    gen.mkdir()
    write_real_as_generated(ds, gen)
    config = tmp_path / "eval.yaml"
    config.write_text("data:\n  class_path: grpose.data.SyntheticPoseDataset\n  init_args: "
                      "{num_samples: 2, seed: 3, split: val, resolution: 48}\n")
    with pytest.raises(ValueError, match="nothing to compute"):  # no detector, no weights
        cli(["--config", str(config), "--images", str(gen), f"--out={tmp_path / 'out'}"])
    detector = ["--detector.class_path=test_evaluate.LookupDetector", "--detector.table={}"]
    res = cli(["--config", str(config), "--images", str(gen), "--data.init_args.num_samples=4",
               *detector, f"--out={tmp_path / 'out'}"])
    assert res["num_images"] == 4 and (tmp_path / "out" / "results.json").is_file()
    with pytest.raises(DataError, match=r"empty: none of the 4 items' generated images is here"):
        cli(["--config", str(config), "--images", str(tmp_path / "empty"), *detector,
             "--data.init_args.num_samples=4", "--on_missing=skip"])


def test_detections_that_miss_lower_ap(tmp_path):
    ds = SyntheticPoseDataset(8, seed=4, split="val", resolution=48)
    table = write_real_as_generated(ds, tmp_path)
    shifted = {k: v + torch.tensor([6.0, 6.0, 0.0]) for k, v in table.items()}
    res = evaluate_folder(str(tmp_path), ds, LookupDetector(shifted))
    assert res["all"]["ap"] < 50


def test_validation_logs_generation_metrics(tiny_parts, tiny_batch):
    import lightning as L

    from grpose.data import PoseDataModule
    from grpose.diffusion import PoseDiffusionModule, SamplingSettings, TrainingSettings
    from grpose.diffusion.components import noise_scheduler
    from grpose.methods import NoPose
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    metrics = GenerationMetrics(LookupDetector({}))
    m = PoseDiffusionModule(unet, vae, text, NoPose(), noise_scheduler(), val_metrics=metrics,
                            training=TrainingSettings(val_metric_batches=1),
                            sampling=SamplingSettings(num_inference_steps=2))
    data = PoseDataModule(val=SyntheticPoseDataset(4, split="val", resolution=64),
                          eval_batch_size=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        num_sanity_val_steps=0)
    out = trainer.validate(m, data)[0]
    assert out["val/pce"] > 0 and out["val/ap"] == 0  # the detector finds nobody
    assert np.isfinite(out["val/loss"])
