"""tools/benchmarks/bench_step.py: every registered method is benchmarked; --memory measures each
method in its own process and reports positive memory figures and ratios to ControlNet."""
import argparse
import json

import pytest

from grpose.methods import METHODS
from tools.benchmarks.bench_step import main, methods, print_table


def test_every_registered_method_is_benchmarked():
    """kb_dmgen included: its knowledge base is overridden to none (no checkpoint needed)."""
    tiny = methods("tiny")
    assert list(tiny) == list(METHODS)
    assert tiny["kb_dmgen"].knowledge_path is None


def test_memory_mode_one_step_two_methods(capsys):
    main(["--shape", "tiny", "--batch", "1", "--steps", "1", "--warmup", "0", "--memory",
          "--only", "controlnet", "t2i_adapter", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mode"] == "memory" and list(out["methods"]) == ["controlnet", "t2i_adapter"]
    for r in out["methods"].values():
        assert r["memory"] == "rss" and r["peak_reset"]
        for key in ("s_per_step", "built_mib", "peak_mib", "train_mib"):
            assert r[key] > 0, (key, r)
        assert r["peak_mib"] == pytest.approx(r["built_mib"] + r["train_mib"])

    print_table(argparse.Namespace(**{k: out[k] for k in ("shape", "batch", "device", "dtype",
                                                           "steps", "warmup")}),
                "memory", out["methods"])
    lines = capsys.readouterr().out.splitlines()
    assert any("mode=memory" in line for line in lines)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines if line.startswith("| ") and "---" not in line}
    assert rows["method"][1:5] == ["peak RSS MiB", "peak x ControlNet", "training share MiB",
                                   "share x ControlNet"]
    for name in ("controlnet", "t2i_adapter"):
        assert all(float(cell) > 0 for cell in rows[name]), rows[name]
    assert float(rows["controlnet"][2]) == float(rows["controlnet"][4]) == 1.0
