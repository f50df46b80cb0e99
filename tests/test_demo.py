"""The end-to-end demo and comparison, shortened to seconds (`--quick`): every stage, worker
processes, the report, reuse; the summary statistics and the task runner on their own."""
import json
import math
import os

import numpy as np
import pytest
import torch

from grpose.demo import main
from grpose.demo.report import pair_notes, summarise
from grpose.demo.run import DemoConfig
from grpose.demo.stages import run_stage
from grpose.demo.tasks import Task, run_tasks
from tools.experiments.vae_ceiling import ceiling


@pytest.mark.slow  # six demo runs end to end (minutes); CI runs the real `make demo` anyway
@pytest.mark.timeout(1800)
def test_quick_demo_end_to_end_and_stage_reuse(tmp_path, capsys):
    out = tmp_path / "demo"
    results = main(["--quick", "--out", str(out)])
    assert list(results["methods"]) == ["real images", "no_pose", "grpose_skeleton", "controlnet"]
    for r in results["methods"].values():
        assert {"ap", "cap", "pce", "fid", "kid", "ap_vs_real"} <= set(r)
    assert results["seeds"] == [0] and results["pairs"] == []
    assert (out / "results.md").read_text().startswith("# grpose demo results")
    for name in ("grpose_skeleton", "controlnet"):  # each method's scale, picked on other images
        tuned = results["conditioning_scale"][name][0]
        assert set(tuned["ap"]) == {"1.0", "2.0"} and tuned["chosen"] in (1.0, 2.0)
    assert json.loads((out / "results.json").read_text())["num_images"] == 8
    assert {p.name for p in (out / "grids").iterdir()} == {
        "real.png", "no_pose-s0.png", "grpose_skeleton-s0.png", "controlnet-s0.png"}
    assert (out / "ap_vs_fid.png").stat().st_size > 0
    assert any((out / "tb").rglob("events.out.tfevents*"))
    rows = ceiling(str(out), batch_size=4)  # the autoencoder's ceiling (tools/experiments/)
    assert rows["real images"] == pytest.approx({**results["methods"]["real images"]})
    trip = rows["vae round trip"]  # (the quick run's pose network finds no one: AP 0)
    assert trip["fid"] > 0 and set(trip) == set(rows["real images"])
    with pytest.raises(FileNotFoundError, match="results.json"):
        ceiling(str(tmp_path))
    capsys.readouterr()
    main(["--quick", "--out", str(out)])  # a second run reuses every stage
    log = capsys.readouterr().out
    for stage in ("data", "pose", "vae", "base", "grpose_skeleton-s0", "controlnet-s0",
                  "score/real", "score/controlnet-s0"):
        assert f"[demo] {stage}: reusing" in log
    moved = tmp_path / "moved"  # a run folder moved (or copied) elsewhere is reused there
    out.rename(moved)
    main(["--quick", "--out", str(moved)])
    assert capsys.readouterr().out.count(": reusing") == 10  # every stage
    out = moved
    for change in (["--adapter-lr", "3e-3"], ["--timestep-sampling", "cubic"]):
        main(["--quick", "--out", str(out), *change])  # only the methods change
        log = capsys.readouterr().out
        for stage in ("data", "pose", "vae", "base", "score/real", "score/no_pose-s0"):
            assert f"[demo] {stage}: reusing" in log
        for stage in ("grpose_skeleton-s0", "controlnet-s0", "score/controlnet-s0"):
            assert f"[demo] {stage}: reusing" not in log and f"[demo] {stage} ..." in log
    main(["--quick", "--out", str(out), "--vae-lr", "2e-3"])  # the VAE and all after it change
    log = capsys.readouterr().out
    assert "[demo] pose: reusing" in log and "[demo] vae ..." in log and "[demo] base ..." in log


def test_quick_compare_in_worker_processes(tmp_path):
    """Two seeds, stages in two worker processes, the GRPose + RePoseDM row (which needs the
    guide pose network, the field and GRPose trained for each seed)."""
    out = tmp_path / "compare"
    results = main(["compare", "--quick", "--jobs", "2", "--seeds", "0,1",
                    "--methods", "grpose_skeleton+reposedm", "--out", str(out)])
    rows = ["no_pose", "grpose_skeleton+reposedm"]
    assert list(results["methods"]) == ["real images", *rows]
    for row in rows:
        values = [results["per_seed"][row][s]["fid"] for s in (0, 1)]
        assert results["methods"][row]["fid"] == pytest.approx(np.mean(values))
        assert results["std"][row]["fid"] == pytest.approx(np.std(values, ddof=1))
    assert (out / "grpose_skeleton-s1" / "method.pt").is_file()
    text = (out / "results.md").read_text()
    assert text.startswith("# grpose method comparison")
    per_seed = results["per_seed"]["grpose_skeleton+reposedm"]
    assert (f"| grpose_skeleton+reposedm | {per_seed[0]['ap']:.2f} / {per_seed[1]['ap']:.2f} | "
            f"{per_seed[0]['ap_vs_real']:.3f} / {per_seed[1]['ap_vs_real']:.3f} |") in text
    assert set(json.loads((out / "results.json").read_text())["per_seed"]["no_pose"]) == {
        "0", "1"}


def test_summary_and_the_pairs_inside_the_seed_spread():
    per_seed = {"a": {0: {"ap": 10.0, "fid": 1.0}, 1: {"ap": 14.0, "fid": 1.2}},
                "b": {0: {"ap": 11.0, "fid": 3.0}, 1: {"ap": 12.0, "fid": 3.1}}}
    results = summarise(per_seed, {"ap": 20.0, "fid": 0.0})
    assert results["methods"]["a"]["ap"] == 12.0
    assert results["std"]["a"]["ap"] == pytest.approx(math.sqrt(8))
    assert results["methods"]["b"]["ap_vs_real"] == pytest.approx(11.5 / 20)
    notes = pair_notes(results, ["a", "b"], n_seeds=2)
    assert len(notes) == 1 and notes[0].startswith("a vs b: AP")  # FID differs by 1.95 > 0.16
    assert pair_notes(results, ["a", "b"], n_seeds=1) == []


def record(cfg, inputs, name):
    return {"name": name, "inputs": sorted(inputs)}


def fail(cfg, inputs):
    raise ValueError("broken stage")


@pytest.mark.parametrize("jobs", [1, 2])
def test_tasks_run_after_their_inputs_and_failures_name_the_stage(jobs):
    tasks = [Task("a", record, args=("a",)), Task("b", record, {"x": "a"}, ("b",)),
             Task("c", record, {"x": "a", "y": "b"}, ("c",))]
    done = run_tasks(None, tasks, jobs)
    assert done["c"] == {"name": "c", "inputs": ["x", "y"]}
    with pytest.raises(RuntimeError, match="stage b failed: broken stage"):
        run_tasks(None, [Task("a", record, args=("a",)), Task("b", fail, {"x": "a"})], jobs)
    with pytest.raises(ValueError, match="unknown tasks"):
        run_tasks(None, [Task("b", record, {"x": "z"}, ("b",))], jobs)


def test_demo_rejects_bad_settings_before_training(tmp_path):
    for argv, message in ((["--scales", "1,x"], "--scales"), (["--max-people", "4"], "--max-people"),
                          (["--methods", "controlnet,nope"], "--methods"),
                          (["--seeds", "0,a"], "--seeds"), (["--lr-decay", "step"], "--lr-decay"),
                          (["--timestep-sampling", "cosine"], "--timestep-sampling")):
        with pytest.raises(SystemExit, match=f"^error: {message}"):  # one line, no traceback
            main(argv + ["--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_a_stage_draws_the_same_whatever_ran_before_it(tmp_path):
    """A worker runs several stages: what one draws from the global RNG (a network's init,
    augmentation) must not depend on the stages before it, nor change the caller's RNG."""
    def draw(folder):
        return {"x": torch.rand(3).tolist()}
    first = run_stage(DemoConfig(out=str(tmp_path / "a")), "pose", {}, draw)
    torch.rand(5)  # something else drew in between
    state = torch.get_rng_state()
    again = run_stage(DemoConfig(out=str(tmp_path / "b")), "pose", {}, draw)
    assert again["x"] == first["x"] and torch.equal(torch.get_rng_state(), state)
    assert run_stage(DemoConfig(out=str(tmp_path / "c"), seed=1), "pose", {}, draw)["x"] != \
        first["x"]  # another seed (or stage name) draws otherwise


def test_a_retrained_stage_starts_a_fresh_tensorboard_folder(tmp_path):
    from grpose.demo.stages import trainer
    cfg = DemoConfig(out=str(tmp_path))
    old = tmp_path / "tb" / "pose_only-s0" / "events.out.tfevents.old"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the curves of a replaced training")
    (tmp_path / "tb" / "pose_only-s1").mkdir()
    t = trainer(cfg, "pose_only-s0", 1)
    assert not old.exists()
    assert os.path.normpath(t.logger.log_dir) == str(tmp_path / "tb" / "pose_only-s0")
    assert (tmp_path / "tb" / "pose_only-s1").exists()  # other stages' curves stay
