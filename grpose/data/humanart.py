"""Human-Art, from the official COCO-format annotations or the HumanSD mapping + npz layout."""
from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from grpose.data.base import TRAIN_SPLITS, PoseDataset, Record, canonical_split
from grpose.data.io import DataError, read_json
from grpose.data.skeletons import NUM_JOINTS


def scenario_of(image_path: str) -> str:
    """`images/<domain>/<scenario>/<id>.jpg` -> `<scenario>`."""
    return os.path.basename(os.path.dirname(os.path.normpath(image_path)))


def coco_people(annotations: list[dict], source: str) -> np.ndarray:
    """COCO `keypoints` (flat 17 x 3 with v in {0, 1, 2}) -> `(P, 17, 3)` with conf 1 / missing.

    Crowd annotations and people without a labelled keypoint are left out (nothing to render).
    """
    people = []
    for k, ann in enumerate(annotations):
        if "keypoints" not in ann:
            raise DataError(f"{source}: annotation id {ann.get('id', k)}", "no 'keypoints' field",
                            "missing field")
        kp = np.asarray(ann["keypoints"], dtype=np.float32)
        if kp.size != NUM_JOINTS * 3:
            raise DataError(f"{source}: annotation id {ann.get('id', k)}",
                            f"'keypoints' has {kp.size} values, expected 51", "bad keypoints")
        kp = kp.reshape(NUM_JOINTS, 3)
        visible = kp[:, 2] > 0
        if ann.get("iscrowd") or not visible.any():
            continue
        kp[:, 2] = visible
        kp[~visible, :2] = -1
        people.append(kp)
    return np.stack(people) if people else np.zeros((0, NUM_JOINTS, 3), np.float32)


def read_id_list(path: str) -> list[str]:
    """Ids or image paths, one per line (or a JSON list)."""
    if path.endswith(".json"):
        items = read_json(path)
        if not isinstance(items, list):
            raise DataError(path, "expected a JSON list of ids or image paths", "malformed json")
        return [str(x) for x in items]
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def protocol_subset(records: list[Record], per_scenario: int = 250,
                    num_scenarios: int | None = 19) -> list[Record]:
    """The evaluation protocol: the first `per_scenario` items (by id) of each scenario that has
    that many, keeping the `num_scenarios` largest scenarios (19 x 250 on Human-Art)."""
    by_scenario = defaultdict(list)
    for rec in records:
        by_scenario[rec.meta["scenario"]].append(rec)
    eligible = sorted((s for s, r in by_scenario.items() if len(r) >= per_scenario),
                      key=lambda s: (-len(by_scenario[s]), s))[:num_scenarios]
    out = []
    for s in sorted(eligible):
        out += sorted(by_scenario[s], key=lambda r: str(r.meta["id"]))[:per_scenario]
    return out


class HumanArtDataset(PoseDataset):
    """Human-Art (any scenario subset) as `PoseSample`s.

    Args:
        root: the dataset folder (holding `images/`, and `annotations/` or the mapping files).
        split: "training"/"train" or "validation"/"val".
        layout: "coco" reads `annotations/<split>_humanart.json` (official release);
            "mapping" reads `mapping_file_<split>.json` + pose `.npz` files (HumanSD release).
        scenarios: keep only these scenarios (e.g. ["cartoon", "dance"]); None keeps all.
        annotation_file: override the annotation / mapping file (relative to root or absolute).
        eval_list: a file of ids or image paths to keep (e.g. the 19 x 250 protocol list).
        **kwargs: `PoseDataset` options (resolution, flip_p, caption_dropout, on_error, ...).
    """

    def __init__(self, root: str, split: str = "validation", layout: str = "coco",
                 scenarios: list[str] | None = None, annotation_file: str | None = None,
                 eval_list: str | None = None, train: bool | None = None, **kwargs):
        split = canonical_split(split)
        super().__init__(train=split in TRAIN_SPLITS.values() if train is None else train, **kwargs)
        self.root, self.split, self.layout = root, split, layout
        if layout == "coco":
            default = os.path.join("annotations", f"{split}_humanart.json")
        elif layout == "mapping":
            default = f"mapping_file_{split}.json"
        else:
            raise ValueError(f"layout must be 'coco' or 'mapping', got {layout!r}")
        path = os.path.join(root, annotation_file or default)
        records = self._coco_records(path) if layout == "coco" else self._mapping_records(path)
        if scenarios is not None:
            wanted = set(scenarios)
            records = [r for r in records if r.meta["scenario"] in wanted]
        if eval_list is not None:
            keep = set(read_id_list(eval_list))
            records = [r for r in records
                       if str(r.meta["id"]) in keep or r.meta["image_path"] in keep]
        self.add_records(records)

    def _coco_records(self, path: str) -> list[Record]:
        data = read_json(path)
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DataError(path, "not a COCO annotation file (needs 'images' and 'annotations')",
                            "malformed json")
        by_image = defaultdict(list)
        for ann in data["annotations"]:
            if "image_id" not in ann:
                raise DataError(f"{path}: annotation id {ann.get('id')}", "no 'image_id'",
                                "missing field")
            by_image[ann["image_id"]].append(ann)
        records = []
        for k, img in enumerate(data["images"]):
            missing = [f for f in ("id", "file_name") if f not in img]
            if missing:
                self.handle_error(DataError(f"{path}: images[{k}]", f"missing field(s) {missing}",
                                            "missing field"))
                continue
            scenario = scenario_of(img["file_name"])
            caption = f"{scenario}, {img.get('description') or img.get('prompt') or ''}".rstrip(", ")
            source = f"{path}: image id {img['id']}"
            try:
                people = coco_people(by_image.get(img["id"], []), path)
            except DataError as e:
                self.handle_error(e)
                continue
            records.append(Record(
                image_path=os.path.join(self.root, img["file_name"]), caption=caption,
                people=people,
                meta={"id": img["id"], "image_path": img["file_name"], "scenario": scenario,
                      "source": source}))
        return records

    def _mapping_records(self, path: str) -> list[Record]:
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(path, "a mapping file must be a JSON object keyed by id",
                            "malformed json")
        return mapping_records(data, path, self.root, self.handle_error)


def mapping_records(entries: dict | list, path: str, root: str, on_error,
                    image_root: str | None = None) -> list[Record]:
    """Records from HumanSD-style mapping entries `{"img_path", "prompt", "pose_path"}`.

    `entries` is a dict keyed by id or a list (the index is the id, unless an entry has "id").
    Paths are relative to `root` (images to `image_root` when given).
    """
    items = entries.items() if isinstance(entries, dict) else (
        (e.get("id", k) if isinstance(e, dict) else k, e) for k, e in enumerate(entries))
    records = []
    for key, entry in items:
        missing = [f for f in ("img_path", "prompt", "pose_path")
                   if not isinstance(entry, dict) or f not in entry]
        if missing:
            on_error(DataError(f"{path}: entry {key!r}", f"missing field(s) {missing}",
                               "missing field"))
            continue
        records.append(Record(
            image_path=os.path.join(image_root or root, entry["img_path"]),
            caption=str(entry["prompt"]), pose_path=os.path.join(root, entry["pose_path"]),
            meta={"id": key, "image_path": entry["img_path"],
                  "scenario": entry.get("scenario") or scenario_of(entry["img_path"])}))
    return records
