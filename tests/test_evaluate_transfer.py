"""tools/commands/evaluate_transfer.py (make eval-transfer) on folders of synthetic pose-transfer
results."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from grpose.callbacks.images import to_uint8
from grpose.data import DataError, SyntheticPairs
from grpose.metrics.report import image_name
from grpose.metrics.transfer_eval import evaluate_transfer_folder
from test_evaluate import LookupDetector  # the scripted detector of the pose evaluation
from tools.commands.evaluate_transfer import cli, main




class TinyFeatures(nn.Module):
    """A fixed random conv feature map, pooled: a stand-in FID feature space."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=2)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, images):  # (N, 3, H, W) in [0, 1] -> (N, 8)
        return torch.relu(self.conv(images)).mean(dim=(2, 3))


def write(ds, folder, side: str, skip=()) -> dict:
    """Each pair's target (`side="target"`) or source image as its generated image."""
    folder.mkdir(exist_ok=True)
    table = {}
    for i in range(len(ds)):
        if i in skip:
            continue
        s = ds[i]
        img = to_uint8((s.image if side == "target" else s.source_image)[None])[0]
        Image.fromarray(img).save(folder / f"{image_name(s.meta)}.png")
        table[img.tobytes()] = s.keypoints
    return table


@pytest.fixture(scope="module")
def pairs():
    return SyntheticPairs(num_pairs=6, seed=1, split="val", resolution=64, render_scale=0.35)


def test_targets_score_perfectly_and_the_source_does_not(pairs, tmp_path):
    table = write(pairs, tmp_path / "target", "target")
    real = SyntheticPairs(num_pairs=8, seed=1, split="train", resolution=64)
    res = evaluate_transfer_folder(str(tmp_path / "target"), pairs, real, LookupDetector(table),
                                   fid_extractor=TinyFeatures(), batch_size=4)
    m = res["metrics"]
    assert m["ssim_gaussian"] == pytest.approx(1) and m["ssim_uniform"] == pytest.approx(1)
    assert m["psnr"] == float("inf") and m["colour_error"] == pytest.approx(0)
    assert m["ap"] == pytest.approx(100) and np.isfinite(m["fid"])
    assert m["person_ssim"] == pytest.approx(1) and res["empty_person_masks"] == 0
    assert set(res["not_computed"]) == {"lpips", "person_lpips"} and res["num_images"] == 6
    groups = {pairs[i].meta["change"] for i in range(len(pairs))}
    assert set(res["by_group"]) == {"ssim_gaussian", "ssim_uniform", "psnr", "person_ssim"}
    split = res["by_group"]["person_ssim"]
    assert {k for k in split if "/" not in k} == groups
    assert sum(split[f"{g}/count"] for g in groups) == 6
    assert set(res["colour_error_per_part"]) == set(SyntheticPairs.part_names)

    write(pairs, tmp_path / "source", "source")
    copy = evaluate_transfer_folder(str(tmp_path / "source"), pairs, real, LookupDetector(table),
                                    fid_extractor=TinyFeatures())["metrics"]
    assert copy["ssim_gaussian"] < 0.95 and copy["colour_error"] > 5 and copy["ap"] < 50
    assert copy["person_ssim"] < copy["ssim_gaussian"] < 0.5  # nothing is in place
    assert np.isfinite(copy["psnr"]) and copy["fid"] > 0


def test_the_targets_background_scores_on_the_image_not_on_the_person(pairs, tmp_path):
    """The reference row "the target's background only": full-image SSIM rewards the
    background; inside the person it scores low."""
    (tmp_path / "bg").mkdir()
    for i in range(len(pairs)):
        s = pairs[i]
        Image.fromarray(to_uint8(s.target_background[None])[0]).save(
            tmp_path / "bg" / f"{image_name(s.meta)}.png")
    m = evaluate_transfer_folder(str(tmp_path / "bg"), pairs)["metrics"]
    assert m["ssim_gaussian"] > 0.4 and m["person_ssim"] < 0.25, m


def test_missing_images_raise_or_skip(pairs, tmp_path):
    write(pairs, tmp_path / "gen", "source", skip={2})
    with pytest.raises(DataError, match="validation_000002.png: generated image not found"):
        evaluate_transfer_folder(str(tmp_path / "gen"), pairs)
    res = evaluate_transfer_folder(str(tmp_path / "gen"), pairs, on_missing="skip")
    assert res["missing"] == 1 and res["num_images"] == 5
    assert set(res["not_computed"]) == {"lpips", "person_lpips", "fid", "ap"}
    with pytest.raises(DataError, match="none of the 6 pairs' generated images"):
        evaluate_transfer_folder(str(tmp_path), pairs, on_missing="skip")


def test_small_images_leave_the_51_px_ssim_out(tmp_path):
    small = SyntheticPairs(num_pairs=2, seed=1, split="val", resolution=40)
    write(small, tmp_path / "gen", "target")
    res = evaluate_transfer_folder(str(tmp_path / "gen"), small)
    assert "ssim_uniform" not in res["metrics"] and res["metrics"]["ssim_gaussian"] == 1
    assert res["not_computed"]["ssim_uniform"] == "images (40 px) smaller than its 51 px window"


def test_main_writes_results(pairs, tmp_path, capsys):
    write(pairs, tmp_path / "gen", "source")
    out = tmp_path / "out"
    main(str(tmp_path / "gen"), pairs, out=str(out))
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["ssim_gaussian"] < 1 and "lpips" not in saved["metrics"]
    md = (out / "results.md").read_text()
    assert "| method | ssim_gaussian | ssim_uniform | psnr | person_ssim | colour_error |" in md
    assert "| group | ssim_gaussian | ssim_uniform | psnr | person_ssim |" in md
    assert "| method | hair | face | torso | panel | hips | left_sleeve |" in md
    assert "lpips: not computed (no lpips_weights" in capsys.readouterr().out


def test_command_line_with_the_synthetic_config(pairs, tmp_path):
    """`tools/commands/evaluate_transfer.py --config configs/eval/transfer_synthetic.yaml
    --images DIR` with the config's dataset fields overridden, as `make eval-transfer ARGS=...`
    passes them."""
    ds = SyntheticPairs(num_pairs=3, seed=0, split="val", resolution=64, render_scale=0.35)
    write(ds, tmp_path / "gen", "target")
    res = cli(["--config", "configs/eval/transfer_synthetic.yaml", "--images",
               str(tmp_path / "gen"), "--data.init_args.num_pairs=3",
               "--out", str(tmp_path / "out")])
    assert res["num_images"] == 3 and res["metrics"]["colour_error"] == pytest.approx(0)
    assert (tmp_path / "out" / "results.md").is_file()
    with pytest.raises(SystemExit):  # a misspelt option is an error, not ignored
        cli(["--config", "configs/eval/transfer_synthetic.yaml", "--images", "x", "--lpips=y"])


def test_reference_folders(pairs, tmp_path):
    """tools/reference/transfer_references.py: the target scores perfectly; JPEG and a resize
    round trip cost a little SSIM (the more, the coarser); the copied source is the floor."""
    from tools.reference.transfer_references import degrade
    from tools.reference.transfer_references import main as references
    scores = {}
    for name, opts in {"target": {}, "jpeg95": {"jpeg_quality": 95},
                       "jpeg50": {"jpeg_quality": 50},
                       "resize": {"resize_to": 32, "resize_filter": "bicubic"},
                       "source": {"kind": "source"}}.items():
        assert references(pairs, str(tmp_path / name), **opts) == len(pairs)
        scores[name] = evaluate_transfer_folder(str(tmp_path / name), pairs)["metrics"]
    ssim = {k: v["ssim_gaussian"] for k, v in scores.items()}
    assert ssim["target"] == pytest.approx(1)
    assert 1 > ssim["jpeg95"] > ssim["jpeg50"] > ssim["source"]
    assert 1 > ssim["resize"] > ssim["source"]
    with pytest.raises(ValueError, match="resize_filter must be one of"):
        degrade(np.zeros((4, 4, 3), np.uint8), resize_to=2, resize_filter="cubic")


def test_deepfashion_folder_resized_and_training_images_counted_once(tmp_path):
    """Non-square PATN pairs; results at twice the size are resized to 256x176 before scoring;
    the FID side reads each training image once although two pairs share a target."""
    from grpose.data import DeepFashionPairs
    from grpose.metrics.transfer_eval import _real_images
    rng = np.random.default_rng(0)
    ys, xs = json.dumps([40, 60] + [-1] * 16), json.dumps([80, 88] + [-1] * 16)
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            pixels = rng.integers(0, 255, (256, 176, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / name)
        (tmp_path / f"fasion-resize-annotation-{split}.csv").write_text(
            "name:keypoints_y:keypoints_x\n" + "".join(f"{n}: {ys}: {xs}\n"
                                                       for n in ("a.jpg", "b.jpg", "c.jpg")))
        (tmp_path / f"fasion-resize-pairs-{split}.csv").write_text(
            "from,to\na.jpg,b.jpg\nc.jpg,b.jpg\n" + ("a.jpg,c.jpg\n" if split == "train" else ""))
    test = DeepFashionPairs(str(tmp_path), split="test")
    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(len(test)):
        big = to_uint8(test[i].image[None])[0].repeat(2, axis=0).repeat(2, axis=1)  # 512x352
        Image.fromarray(big).save(gen / f"{image_name(test[i].meta)}.png")
    train = DeepFashionPairs(str(tmp_path), split="train")
    res = evaluate_transfer_folder(str(gen), test, train, fid_extractor=TinyFeatures())
    assert res["num_images"] == 2 and 0.5 < res["metrics"]["ssim_gaussian"] < 1
    assert "colour_error" in res["not_computed"] and np.isfinite(res["metrics"]["fid"])
    assert "person_ssim" in res["not_computed"] and res["by_group"] == {}
    ids = [i for _, batch_ids in _real_images(train, None, 2) for i in batch_ids]
    assert ids == [0, 0, 1]  # two pairs' target is train/b.jpg
    one = DeepFashionPairs(str(tmp_path), split="test")  # targets: b.jpg twice
    res = evaluate_transfer_folder(str(gen), test, one, fid_extractor=TinyFeatures())
    assert res["not_computed"]["fid"] == "FID needs 2 or more images a side: 1 real, 2 generated"
