"""Streamed scoring: `make eval` reads items and images batch by batch (loader workers too),
in the chunks a whole-list run would make, and its peak memory does not grow with the number of
images (stand-in 512^2 images, a cheap stand-in detector, a child process per count)."""
from __future__ import annotations

import argparse

import torch
from PIL import Image

from grpose.callbacks.images import to_uint8
from grpose.data import SyntheticPoseDataset
from grpose.metrics.evaluate import GeneratedStream, evaluate_folder, grouped_order
from grpose.metrics.report import image_name
from test_evaluate import LookupDetector
from tools.benchmarks import bench_eval_memory as bench


def write_generated(ds, folder, skip=()) -> dict:
    """Each item's real image as its generated image; the detector table of a shifted pose."""
    table = {}
    for i in range(len(ds)):
        s = ds[i]
        img = to_uint8(s.image[None])[0]
        if i not in skip:
            Image.fromarray(img).save(folder / f"{image_name(s.meta)}.png")
        table[img.tobytes()] = s.keypoints + torch.tensor([3.0 * (i % 3), 0.0, 0.0])
    return table


def test_chunks_are_the_groups_cut_every_batch_size_in_any_worker_count(tmp_path):
    ds = SyntheticPoseDataset(17, seed=5, split="val", resolution=32)
    write_generated(ds, tmp_path, skip={4})
    scenario = {ds[i].meta["id"]: ds[i].meta["scenario"] for i in range(len(ds))}
    expected = {}
    for i in range(len(ds)):
        if i != 4:
            expected.setdefault(ds[i].meta["scenario"], []).append(ds[i].meta["id"])
    for workers in (0, 2):
        stream = GeneratedStream(str(tmp_path), ds, "skip", 3, workers, "scenario")
        chunks = [(key, [item.meta["id"] for item, _ in chunk]) for key, chunk in stream]
        assert all(len(ids) <= 3 and {scenario[i] for i in ids} == {key} for key, ids in chunks)
        got = {}
        for key, ids in chunks:
            got.setdefault(key, []).append(ids)
        assert got == {k: [v[j:j + 3] for j in range(0, len(v), 3)] for k, v in expected.items()}
        assert (stream.found, stream.missing) == (16, 1)


def test_records_order_the_groups_and_workers_give_the_same_results(tmp_path):
    data = bench.StandInPeople(23, resolution=32, scenarios=4)
    assert grouped_order(data, "scenario") == sorted(range(23), key=lambda i: (i % 4, i))
    assert grouped_order(SyntheticPoseDataset(3, seed=0), "scenario") is None  # no records
    bench.write_folder(str(tmp_path), data)
    detector = bench.StandInDetector(32)
    keys = [key for key, _ in GeneratedStream(str(tmp_path), data, batch_size=4,
                                              group="scenario")]
    assert keys == sorted(keys)  # one group after another: one partial chunk at a time
    ds = SyntheticPoseDataset(23, seed=5, split="val", resolution=32)
    gen = tmp_path / "synthetic"
    gen.mkdir()
    table = write_generated(ds, gen, skip={9})
    for legacy in (False, True):
        runs = [evaluate_folder(str(gen), ds, LookupDetector(table), batch_size=4, legacy=legacy,
                                on_missing="skip", num_workers=w) for w in (0, 2)]
        assert runs[0] == runs[1] and runs[0]["missing"] == 1
    assert evaluate_folder(str(tmp_path), data, detector, batch_size=4, num_workers=2) == \
        evaluate_folder(str(tmp_path), data, detector, batch_size=4)


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path, one_thread):
    """384 images at 512^2 kept as today's list did would take 9 MB each (real image, pose
    render and generated image in float32): 2.3 GB more than 128 images. Streamed, the peak
    stays within the allocator's noise of the smaller run's."""
    folder = str(tmp_path / "generated")
    bench.write_folder(folder, bench.StandInPeople(384, 512, scenarios=4))
    args = argparse.Namespace(folder=folder, batch=8, resolution=512, scenarios=4)
    peaks = {}
    for count in (128, 384):  # a child process each (the tool's own runs)
        row = bench.run_child(args, count, 0)
        assert row["count"] == count and row["ap"] > 0
        peaks[count] = row["peak_mib"]
    growth = peaks[384] - peaks[128]
    assert growth < 200, f"peak grew {growth:.0f} MiB from 128 to 384 images: {peaks}"
