"""Stages as tasks with dependencies, each started in a worker process as soon as the stages it
builds on have finished: `jobs` narrow tasks at a time with one share of the cores each, or one
wide task with all of them (the demo's convolutions at 64 px use two threads well; its UNet
steps on 16 x 16 latents do not, so two of those run side by side)."""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Task:
    """`fn(cfg, inputs, *args) -> info` (a module-level function), where `inputs` maps each key
    of `after` to the info of the task it names."""

    name: str
    fn: Callable
    after: dict[str, str] = field(default_factory=dict)
    args: tuple = ()
    wide: bool = False  # runs alone, with every job's threads


def _call(fn: Callable, threads: int, *args) -> dict:
    torch.set_num_threads(threads)
    return fn(*args)


def default_jobs() -> int:
    """Two stages at a time where there are two cores or more (see docs/benchmarks.md)."""
    return min(2, os.cpu_count() or 1)


def run_tasks(cfg, tasks: list[Task], jobs: int, threads: int | None = None) -> dict[str, dict]:
    """Run `tasks` (in a dependency order); they start in the listed order, each when the tasks
    it builds on have finished and a slot is free; returns each task's info by name.
    `threads`: per narrow task (default: the cores over `jobs`). `jobs=1` runs them in this
    process, in order."""
    names = {t.name for t in tasks}
    for t in tasks:
        missing = set(t.after.values()) - names
        if missing:
            raise ValueError(f"task {t.name} builds on unknown tasks {sorted(missing)}")
    done: dict[str, dict] = {}

    def inputs(t: Task) -> dict:
        return {key: done[name] for key, name in t.after.items()}
    start = time.time()
    if jobs <= 1:
        for t in tasks:
            try:
                done[t.name] = t.fn(cfg, inputs(t), *t.args)
            except Exception as error:
                raise RuntimeError(f"stage {t.name} failed: {error}") from error
        return done
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        waiting, running = list(tasks), {}
        while waiting or running:
            while waiting and set(waiting[0].after.values()) <= set(done):
                t, width = waiting[0], jobs if waiting[0].wide else 1
                if sum(jobs if r.wide else 1 for r in running.values()) + width > jobs:
                    break
                running[pool.submit(_call, t.fn, threads * width, cfg, inputs(t), *t.args)] = t
                waiting.pop(0)
            if not running:
                raise ValueError(f"tasks wait on each other: {[t.name for t in waiting]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                t = running.pop(future)
                try:
                    done[t.name] = future.result()
                except Exception as error:
                    pool.shutdown(cancel_futures=True)
                    raise RuntimeError(f"stage {t.name} failed: {error}") from error
                print(f"[demo] {len(done)}/{len(tasks)} stages done "
                      f"({(time.time() - start) / 60:.1f} min)", flush=True)
    return done
