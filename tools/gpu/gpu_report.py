"""tools/gpu/gpu_check.py's report: the goals beside each figure, `gpu_check.json` and
`gpu_check.md`."""
from __future__ import annotations

import json
import os

GOALS = dict(step_ratio=1.10, mfu=0.40, sample_ratio=1.0, eval_seconds=120.0)


def _row(figure: str, value, goal: str, ok) -> dict:
    return dict(figure=figure, value=value, goal=goal,
                verdict="-" if ok is None else ("met" if ok else "NOT met"))


def summary(results: dict, args) -> list[dict]:
    """The goals' rows: GRPose step <= 1.10x ControlNet, MFU >= 40 %, sampling >= 1.0x the
    diffusers pipeline, evaluation < 2 minutes. A dry run (`--tiny`) gives no verdicts."""
    judge = not args.tiny
    rows = []
    sec = results["sections"]
    tests = sec.get("pytest", {}).get("counts")
    if tests:
        rows.append(_row("gpu tests passed / failed / skipped",
                         f"{tests['passed']} / {tests['failed']} / {tests['skipped']}",
                         "none failed", tests["failed"] == 0 if judge else None))
    for label, setting in sec.get("step", {}).get("settings", {}).items():
        methods = setting.get("methods", {})
        g, c = methods.get("grpose_skeleton", {}), methods.get("controlnet", {})
        if g.get("x_controlnet") is not None:
            rows.append(_row(f"step {label}: GRPose (skeleton) s/step x ControlNet",
                             round(g["x_controlnet"], 3), f"<= {GOALS['step_ratio']}",
                             g["x_controlnet"] <= GOALS["step_ratio"] if judge else None))
        for name, r in (("controlnet", c), ("grpose_skeleton", g)):
            if r.get("mfu") is not None:
                rows.append(_row(f"step {label}: {name} MFU", r["mfu"],
                                 f">= {GOALS['mfu']}", r["mfu"] >= GOALS["mfu"] if judge else None))
    samples = sec.get("sample", {}).get("methods", {})
    pipe = samples.get("diffusers_controlnet_pipeline", {}).get("images_per_s")
    ours = samples.get("controlnet", {}).get("images_per_s")
    if pipe and ours:
        rows.append(_row("sampling: ControlNet images/s x diffusers pipeline",
                         round(ours / pipe, 3), f">= {GOALS['sample_ratio']}",
                         ours / pipe >= GOALS["sample_ratio"] if judge else None))
    for name, r in sec.get("eval", {}).get("detectors", {}).items():
        rows.append(_row(f"evaluation ({name}): s for {r['num_images']} images at "
                         f"{r['resolution']}^2", round(r["seconds"], 1),
                         f"< {GOALS['eval_seconds']:.0f}",
                         r["seconds"] < GOALS["eval_seconds"] if judge else None))
    for name, err in results.get("errors", {}).items():
        rows.append(_row(f"section {name}", "error: " + err[:200], "runs", False))
    for name in results.get("skipped_sections", []):
        rows.append(_row(f"section {name}", "skipped: past --budget-s", "runs", False))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _method_table(methods: dict, columns: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in methods.items():
        if "error" in r or "skipped" in r:
            cells = [r.get("error") or "skipped: " + r["skipped"]] + [""] * (len(columns) - 1)
        else:
            cells = [_fmt(r.get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(c.replace("|", "/")[:160] for c in cells) + " |")
    return lines


def markdown(results: dict, rows: list[dict]) -> str:
    env = results["sections"].get("env", {})
    lines = ["# gpu_check", "", f"{env.get('date', '')} · {env.get('gpu', env.get('device', ''))}"
             f" · torch {env.get('torch', '')} · commit {env.get('commit', '')} · "
             f"args {json.dumps(results['args'])}", "", "## Summary", "",
             "| figure | value | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['figure']} | {_fmt(r['value'])} | {r['goal']} | {r['verdict']} |"
              for r in rows]
    if env.get("absent"):
        lines += ["", f"Packages absent: {', '.join(env['absent'])}"]
    tests = results["sections"].get("pytest")
    if tests:
        lines += ["", "## gpu tests", "", f"files: {', '.join(tests['files'])}; "
                  f"counts: {tests['counts']}; skip reasons: {tests['skip_reasons']}"]
        lines += [f"- FAILED {c['name']}: {c['message']}" for c in tests["failed"]]
    step = results["sections"].get("step", {})
    for label, s in step.get("settings", {}).items():
        lines += ["", f"## step: {label} (batch {s.get('batch')}, {s.get('seconds', 0):.0f} s)",
                  ""]
        lines += _method_table(s.get("methods", {}), ["s_per_step", "images_per_s",
                                                      "x_controlnet", "peak_mib",
                                                      "flops_per_step", "mfu"]) \
            if "methods" in s else [f"error: {s.get('error')}"]
    if step.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in step["skipped"].items())]
    sample = results["sections"].get("sample")
    if sample:
        lines += ["", f"## sampling ({sample['steps']} DDIM steps, CFG, batch {sample['batch']})",
                  ""]
        lines += _method_table(sample["methods"], ["s_per_run", "images_per_s",
                                                   "x_controlnet_speed"])
    ev = results["sections"].get("eval")
    if ev:
        lines += ["", f"## evaluation ({ev['num_images']} images at {ev['resolution']}^2, "
                  f"batch {ev['batch']}, {ev['workers']} workers)", "",
                  "| detector | s | images/s | of which compute() s | metrics |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | "
                  f"{r['compute_seconds']:.1f} | {', '.join(sorted(r['metrics']))} |"
                  for n, r in ev["detectors"].items()]
    secs = results.get("seconds", {})
    lines += ["", "Section seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()), ""]
    return "\n".join(lines)


def write_report(out: str, results: dict, rows: list[dict]) -> None:
    """`gpu_check.json` (results + summary rows) and `gpu_check.md` in `out`."""
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump({**results, "summary": rows}, f, indent=1, default=str)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(markdown(results, rows))
