"""The end-to-end demo, shortened to seconds (`--quick`): every stage, the report, reuse."""
import json

from grpose.demo import main


def test_quick_demo_end_to_end_and_stage_reuse(tmp_path, capsys):
    out = tmp_path / "demo"
    results = main(["--quick", "--out", str(out)])
    assert set(results["methods"]) == {"real images", "grpose_skeleton", "controlnet", "no_pose"}
    for r in results["methods"].values():
        assert {"ap", "cap", "pce", "fid", "kid"} <= set(r)
    assert (out / "results.md").read_text().startswith("# grpose demo results")
    for name in ("grpose_skeleton", "controlnet"):  # each method's scale, picked on other images
        tuned = results["conditioning_scale"][name]
        assert set(tuned["ap"]) == {"1.0", "2.0"} and tuned["chosen"] in (1.0, 2.0)
    assert json.loads((out / "results.json").read_text())["num_images"] == 8
    assert {p.name for p in (out / "grids").iterdir()} == {
        "real_images.png", "grpose_skeleton.png", "controlnet.png", "no_pose.png"}
    assert any((out / "tb").rglob("events.out.tfevents*"))
    capsys.readouterr()
    main(["--quick", "--out", str(out)])  # a second run reuses every trained stage
    log = capsys.readouterr().out
    for stage in ("data", "pose", "vae", "base", "grpose_skeleton", "controlnet"):
        assert f"[demo] {stage}: reusing" in log
    assert json.loads((out / "results.json").read_text())["wall_seconds"] > 0
    main(["--quick", "--out", str(out), "--adapter-lr", "1e-3"])  # only the adapters change
    log = capsys.readouterr().out
    for stage in ("data", "pose", "vae", "base"):
        assert f"[demo] {stage}: reusing" in log
    for stage in ("grpose_skeleton", "controlnet"):
        assert f"[demo] {stage}: reusing" not in log and f"[demo] {stage} ..." in log


def test_demo_rejects_bad_settings_before_training(tmp_path):
    import pytest
    for argv, message in ((["--scales", "1,x"], "--scales"),
                          (["--max-people", "4"], "--max-people")):
        with pytest.raises(ValueError, match=message):
            main(argv + ["--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
