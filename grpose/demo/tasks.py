"""Stages as tasks with dependencies, each started in a worker process as soon as the stages it
builds on have finished (`jobs` at a time, `threads` torch threads each)."""
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


def _worker(threads: int) -> None:
    torch.set_num_threads(threads)


def default_jobs() -> int:
    """Two stages at a time where there are two cores or more: the demo's tiny models use one
    core far better than two (see docs/benchmarks.md)."""
    return min(2, os.cpu_count() or 1)


def run_tasks(cfg, tasks: list[Task], jobs: int, threads: int | None = None) -> dict[str, dict]:
    """Run `tasks` (listed in a dependency order; earlier ones start first when several are
    ready); returns each task's info by name. `jobs=1` runs them in this process, in order."""
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
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker,
                             initargs=(threads,)) as pool:
        waiting, running = list(tasks), {}
        while waiting or running:
            for t in [t for t in waiting if set(t.after.values()) <= set(done)]:
                if len(running) >= jobs:
                    break
                running[pool.submit(t.fn, cfg, inputs(t), *t.args)] = t
                waiting.remove(t)
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
