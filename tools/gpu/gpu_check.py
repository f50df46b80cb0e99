"""The GPU battery (`make gpu-check`): every CUDA test and GPU benchmark of grpose in one call,
printing its progress and writing `gpu_check.json`, `gpu_check.md` (and the tests' junit XML)
to `--out` (default runs/gpu_check; the environment variable `OUT` if set).

Sections (`--sections`, default all, in this order):
  env     torch / CUDA / device, the versions of the packages grpose needs (absent ones named)
  pytest  the `gpu`-marked tests of every tests/*.py that has one (a subprocess: `-m gpu`)
  step    training step at SD-1.5 shapes (random-init SD-1.5 UNet / VAE / ViT-L text tower, 512^2,
          bf16), every registered method vs ControlNet interleaved (tools/gpu/gpu_train.py): batch
          `--batch` without and with gradient checkpointing, the largest of `--max-batches` that
          fits (checkpointing on), and `torch.compile` on the UNet (`--compile-methods`)
  sample  50-step DDIM + CFG images/s of every method and of diffusers'
          `StableDiffusionControlNetPipeline` on ControlNet's weights (tools/gpu/gpu_sample.py)
  eval    scoring `--eval-images` generated 512^2 stand-ins: detector(s) present, FID / KID
          features, CLIP score, a DataLoader with workers and pinned memory (tools/gpu/gpu_eval.py)
Then a summary with the goals beside each figure. A section or method that fails is recorded
with its error and the battery goes on; the exit status is 1 if anything failed.

On a machine with a CUDA GPU, after `make install` (the project's venv):
    make gpu-check ARGS="--out runs/gpu_check"     # = .venv/bin/python tools/gpu/gpu_check.py
`--budget-s` (default 500) starts no section or step setting after that many seconds, so a run
under a time limit still writes what it measured; `--sections` / `--methods` pick a part.
`make gpu-wheels` downloads, into `.whl/`, the wheels of grpose's dependencies that a machine
with Python 3.12 and torch but without a package index lacks (install them there with
`pip install --no-index --no-deps .whl/*.whl`).
CPU dry run, the same code paths at tiny shapes (tests/test_gpu_check.py runs it):
    python tools/gpu/gpu_check.py --device cpu --tiny --out /tmp/gpu_check
"""
from __future__ import annotations

import argparse
import gc
import glob
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from importlib import metadata

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from tools.gpu.gpu_report import summary, write_report  # noqa: E402

SECTIONS = ("env", "pytest", "step", "sample", "eval")
PACKAGES = ("torch", "diffusers", "lightning", "open_clip_torch", "dgl", "omegaconf",
            "jsonargparse", "torchmetrics", "torch_fidelity", "pycocotools", "munkres", "timm",
            "transformers", "torchdata")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def over_budget(args, what: str) -> bool:
    """True (and logged) once `--budget-s` has passed since the start: `what` is skipped."""
    late = time.perf_counter() > args.deadline
    if late:
        log(f"skipped {what}: past the {args.budget_s:.0f} s budget")
    return late


def section_env(args) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    out = dict(python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, device=args.device, packages=versions,
               absent=[n for n, v in versions.items() if v is None], date=time.strftime(
                   "%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_mib=props.total_memory // 2**20,
                   multiprocessors=props.multi_processor_count)
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip() or None
    except OSError:
        out["commit"] = None
    log(f"env: {out}")
    return out


def gpu_test_files() -> list[str]:
    """tests/*.py holding a `gpu`-marked test."""
    return sorted(p for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
                  if "pytest.mark.gpu" in open(p).read())


def section_pytest(args) -> dict:
    files = gpu_test_files()
    xml = os.path.join(args.out, "gpu_tests.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-rs", *files]
    log(f"pytest: {' '.join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in cmd)}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=args.pytest_timeout)
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag != "skipped" else "skipped"
                message = (node.get("message") or "")[:300]
                break
        cases.append(dict(name=f"{case.get('classname')}::{case.get('name')}", outcome=outcome,
                          message=message, seconds=float(case.get("time") or 0)))
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    reasons = sorted({c["message"] for c in cases if c["outcome"] == "skipped"})
    return dict(files=[os.path.relpath(f, ROOT) for f in files], returncode=proc.returncode,
                counts=counts, skip_reasons=reasons,
                failed=[c for c in cases if c["outcome"] == "failed"], cases=cases)


def _methods(shape: str, names=None) -> tuple[dict, dict]:
    """`({name: method}, {name: why skipped})` of the registry's methods from their configs."""
    from grpose.methods import METHODS, TRANSFER_METHODS, method_from_config
    from tools.benchmarks.bench_step import OVERRIDES
    folder = os.path.join(ROOT, "configs/method/tiny" if shape == "tiny" else "configs/method")
    built, skipped = {}, {n: "pose-transfer method: needs a source person (not benchmarked)"
                          for n in TRANSFER_METHODS}
    for name in METHODS:
        if names is not None and name not in names:
            continue
        path = f"{folder}/{name}.yaml"
        if not os.path.isfile(path):
            skipped[name] = f"no config {os.path.relpath(path, ROOT)}"
            continue
        built[name] = method_from_config(path, **OVERRIDES.get(name, {}))
    for name, why in skipped.items():
        log(f"  skipped {name}: {why}")
    return built, skipped


def section_step(args) -> dict:
    from tools.gpu.gpu_train import TrainStep, frozen_parts, largest_batch, make_inputs, run_setting
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    parts = frozen_parts(args.shape, device)
    built, skipped = _methods(args.shape, args.methods)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        steps = {name: TrainStep(parts, m, dtype) for name, m in built.items()}
    unet = parts[0]
    peak = args.peak_tflops * 1e12
    out = dict(shape=args.shape, dtype=args.dtype, peak_tflops=args.peak_tflops,
               skipped=skipped, settings={})
    inputs = make_inputs(args.shape, args.batch, device)

    def flops_of(label, scale=1.0):  # FLOPs per step of a setting already run, scaled
        methods = out["settings"].get(label, {}).get("methods", {})
        return {n: r["flops_per_step"] * scale for n, r in methods.items()
                if r.get("flops_per_step")}

    def setting(label, chosen, inputs, checkpointing, warmup=None, n=None, flops_from=None,
                **kw):
        if checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        log(f"step: {label} ({len(chosen)} methods, batch {len(inputs['captions'])})")
        start = time.perf_counter()
        res = run_setting(chosen, inputs, args.step_warmup if warmup is None else warmup,
                          args.step_n if n is None else n, peak, log,
                          checkpointing=checkpointing, **kw)
        out["settings"][label] = dict(batch=len(inputs["captions"]), checkpointing=checkpointing,
                                      seconds=time.perf_counter() - start, methods=res,
                                      flops_from=flops_from)
        for name, r in res.items():
            log(f"  {name}: " + (r["error"][:120] if "error" in r else
                                 f"{r['images_per_s']:.2f} images/s, x{r['x_controlnet'] or 0:.2f}"
                                 f" ControlNet, MFU {r['mfu'] or 0:.3f}"))

    setting(f"batch{args.batch}", steps, inputs, False)
    setting(f"batch{args.batch}_checkpointing", steps, inputs, True)
    if "controlnet" in steps and not over_budget(args, "step: largest batch"):
        unet.enable_gradient_checkpointing()
        log(f"step: largest batch of {args.max_batches} (ControlNet, checkpointing)")
        best = largest_batch(steps["controlnet"], args.shape, args.max_batches, device, log,
                             checkpointing=True)
        out["largest_batch"] = best
        if best:  # fewer steps at this size; FLOPs scaled from the batch setting's count
            base = f"batch{args.batch}_checkpointing"
            setting("largest_checkpointing", steps, make_inputs(args.shape, best, device), True,
                    warmup=min(1, args.step_warmup), n=min(2, args.step_n),
                    flops=flops_of(base, best / args.batch),
                    flops_from=f"{base} x {best}/{args.batch}")
    chosen = {n: s for n, s in steps.items() if n in args.compile_methods}
    if chosen and not over_budget(args, "step: compiled UNet"):
        log(f"step: torch.compile(unet, backend={args.compile_backend})")
        try:
            compiled = torch.compile(unet, backend=args.compile_backend)
            setting(f"batch{args.batch}_compiled_unet", chosen, inputs, False, unet_fn=compiled,
                    warmup=args.step_warmup + 1, flops=flops_of(f"batch{args.batch}"),
                    flops_from=f"batch{args.batch}")
        except Exception as exc:
            out["settings"]["compiled_unet"] = dict(error=f"{type(exc).__name__}: {exc}"[:500])
        finally:  # dynamo's caches keep the traced graphs (and their tensors) alive otherwise
            torch._dynamo.reset()
    return out


def section_sample(args) -> dict:
    from tools.gpu.gpu_sample import run_sampling
    built, skipped = _methods(args.shape, args.methods)
    log(f"sample: {len(built)} methods + the diffusers pipeline, batch {args.sample_batch}, "
        f"{args.sample_steps} steps")
    res = run_sampling(args.shape, built, args.sample_batch, args.sample_steps,
                       args.sample_repeats, args.sample_warmup, torch.device(args.device),
                       DTYPES[args.dtype], log)
    for name, r in res.items():
        log(f"  {name}: {r}")
    return dict(batch=args.sample_batch, steps=args.sample_steps, repeats=args.sample_repeats,
                skipped=skipped, methods=res)


def section_eval(args) -> dict:
    from tools.gpu.gpu_eval import run_eval
    with tempfile.TemporaryDirectory(prefix="gpu_check_eval_") as folder:
        log(f"eval: {args.eval_images} images at {args.eval_res}^2, batch {args.eval_batch}, "
            f"{args.workers} workers")
        res = run_eval(folder, args.eval_images, args.eval_res, args.eval_batch, args.workers,
                       torch.device(args.device), "bfloat16" if args.dtype == "bf16"
                       else "float32", args.tiny, log)
    return dict(num_images=args.eval_images, resolution=args.eval_res, batch=args.eval_batch,
                workers=args.workers, detectors=res)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "runs/gpu_check"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shapes and counts: the CPU dry run of the same code paths")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--methods", nargs="+", help="registered methods to run (default: all)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 (fp32 with --tiny)")
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="dense bf16 peak for MFU (790: an H200's measured matrix rate)")
    p.add_argument("--batch", type=int)
    p.add_argument("--max-batches", type=int, nargs="+")
    p.add_argument("--step-warmup", type=int)
    p.add_argument("--step-n", type=int)
    p.add_argument("--compile-methods", nargs="*", default=["controlnet", "grpose_skeleton"])
    p.add_argument("--compile-backend", help="default inductor (eager with --tiny)")
    p.add_argument("--sample-batch", type=int)
    p.add_argument("--sample-steps", type=int)
    p.add_argument("--sample-repeats", type=int)
    p.add_argument("--sample-warmup", type=int)
    p.add_argument("--eval-images", type=int)
    p.add_argument("--eval-res", type=int)
    p.add_argument("--eval-batch", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--pytest-timeout", type=int, default=300)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--budget-s", type=float, default=500.0,
                   help="no section or step setting starts after this many seconds (what ran "
                        "is still written: for runs under a time limit)")
    args = p.parse_args(argv)
    full = dict(dtype="bf16", batch=8, max_batches=[16, 32, 64], step_warmup=2, step_n=3,
                compile_backend="inductor", sample_batch=4, sample_steps=50,
                sample_repeats=2, sample_warmup=1, eval_images=4750, eval_res=512, eval_batch=64,
                workers=min(16, os.cpu_count() or 1))
    tiny = dict(dtype="fp32", batch=2, max_batches=[3], step_warmup=0, step_n=1,
                compile_backend="eager", sample_batch=1, sample_steps=2, sample_repeats=1,
                sample_warmup=0, eval_images=6, eval_res=64, eval_batch=3, workers=2)
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.shape = "tiny" if args.tiny else "sd15"
    from grpose.methods import METHODS
    unknown = sorted(set(args.methods or ()) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; registered: {sorted(METHODS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device (use --device cpu --tiny)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    results = dict(args={k: v for k, v in vars(args).items()}, sections={}, errors={},
                   skipped_sections=[])
    start = time.perf_counter()
    args.deadline = start + args.budget_s
    for name in args.sections:
        if over_budget(args, f"section {name}"):
            results["skipped_sections"].append(name)
            continue
        log(f"== {name} ==")
        t0 = time.perf_counter()
        try:
            results["sections"][name] = globals()[f"section_{name}"](args)
        except Exception as exc:  # recorded; the other sections still run
            traceback.print_exc()
            results["errors"][name] = f"{type(exc).__name__}: {exc}"[:1000]
        gc.collect()  # the section's models go before the next one's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        results.setdefault("seconds", {})[name] = time.perf_counter() - t0
        log(f"{name}: {time.perf_counter() - t0:.1f} s")
        write_report(args.out, results, summary(results, args))  # partial results survive
    results["total_seconds"] = time.perf_counter() - start
    rows = summary(results, args)
    write_report(args.out, results, rows)
    log(f"done in {results['total_seconds']:.0f} s: {args.out}/gpu_check.md")
    print(open(os.path.join(args.out, "gpu_check.md")).read(), flush=True)
    failed_tests = results["sections"].get("pytest", {}).get("counts", {}).get("failed", 0)
    return 1 if results["errors"] or results["skipped_sections"] or failed_tests else 0


if __name__ == "__main__":
    sys.exit(main())
