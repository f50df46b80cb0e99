"""tools/benchmarks/bench_sample.py: sampling time per image of each method, RePoseDM guidance's
cost per step, T2I-Adapter's features once per run against every step."""
import argparse
import json

import pytest
import torch

from grpose.diffusion.reposedm import RePoseDMGuidance
from grpose.methods.t2i_adapter import T2IAdapter
from tools.benchmarks.bench_sample import GUIDED, PER_STEP, build_runs, main, print_tables


def test_two_steps_three_methods_json_and_table(capsys):
    main(["--batch", "1", "--steps", "2", "--repeats", "1", "--warmup", "0", "--json",
          "--only", "controlnet", "grpose_skeleton", "t2i_adapter"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["shape"], out["steps"], out["cfg_scale"]) == ("tiny", 2, 7.5)
    assert list(out["methods"]) == ["controlnet", "grpose_skeleton", "t2i_adapter", GUIDED,
                                    PER_STEP]
    for r in out["methods"].values():
        assert r["s_per_image"] > 0 and r["x_controlnet"] > 0
    assert out["methods"]["controlnet"]["x_controlnet"] == 1.0

    g = out["reposedm"]
    assert g["method"] == "grpose_skeleton" and g["guided_steps"] == 2  # stop 0.6 of 2 steps
    assert g["s_per_image_without"] == out["methods"]["grpose_skeleton"]["s_per_image"]
    assert g["s_per_image_with"] == out["methods"][GUIDED]["s_per_image"]
    assert g["s_per_image_with"] > 0 and g["s_per_image_without"] > 0  # (no timing order:
    # one loaded run can invert it; test_runs_do_what_they_are_named_after counts the work)
    assert g["s_per_image_per_step"] == pytest.approx(
        (g["s_per_image_with"] - g["s_per_image_without"]) / 2)
    assert g["s_per_image_per_guided_step"] == pytest.approx(g["s_per_image_per_step"])
    assert g["ratio"] == pytest.approx(g["s_per_image_with"] / g["s_per_image_without"])

    t = out["t2i_adapter_features"]
    assert t["s_per_image_once"] == out["methods"]["t2i_adapter"]["s_per_image"] > 0
    assert t["s_per_image_per_step"] == out["methods"][PER_STEP]["s_per_image"] > 0
    assert t["ratio"] == pytest.approx(t["s_per_image_per_step"] / t["s_per_image_once"])

    print_tables(out)
    lines = capsys.readouterr().out.splitlines()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines
            if line.startswith("| ") and "---" not in line]
    assert ["controlnet", f"{out['methods']['controlnet']['s_per_image']:.3f}", "1.00"] in rows
    assert any("acts on 2 of 2 steps" in line for line in lines)
    assert [f"{g['s_per_image_without']:.3f}", f"{g['s_per_image_with']:.3f}",
            f"{g['ratio']:.2f}", f"{g['s_per_image_per_step']:.4f}",
            f"{g['s_per_image_per_guided_step']:.4f}"] in rows


def test_runs_do_what_they_are_named_after(monkeypatch):
    """Features once per run vs at every step; the guidance acts on the configured steps;
    building leaves the global RNG alone."""
    calls = {"prepare": 0, "energy": 0}

    def counted(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, wrapper)
    counted(T2IAdapter, "prepare")
    counted(RePoseDMGuidance, "energy")
    args = argparse.Namespace(shape="tiny", batch=1, steps=5, seed=0, device="cpu",
                              dtype="fp32", guidance=True)
    state = torch.get_rng_state()
    runs, guided_steps = build_runs(args, ["grpose_skeleton", "t2i_adapter"])
    assert torch.equal(torch.get_rng_state(), state)
    assert list(runs) == ["grpose_skeleton", "t2i_adapter", GUIDED, PER_STEP]
    assert guided_steps == 3  # index / 5 < 0.6

    for name, prepares, energies in (("t2i_adapter", 1, 0), (PER_STEP, 5, 0),
                                     ("grpose_skeleton", 0, 0), (GUIDED, 0, 3)):
        calls.update(prepare=0, energy=0)
        assert runs[name]() > 0
        assert calls == {"prepare": prepares, "energy": energies}, name
