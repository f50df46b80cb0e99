"""One place for how results are named and printed: the metric columns, the markdown table and
the file name of a generated image."""
from __future__ import annotations

import math
import os

COLUMNS = {"ap": "AP", "cap": "CAP", "pce": "PCE", "fid": "FID", "fid64": "FID-64", "kid": "KID",
           "clip": "CLIP", "ap_vs_real": "AP / real AP"}
"""Metric key -> column header, in table order."""


def image_name(meta: dict) -> str:
    """The file stem of an item's generated image (`GenerationWriter` writes `<stem>.png`)."""
    return str(meta["id"]).replace(os.sep, "_")


def markdown_table(rows: dict[str, dict], first: str = "method", digits: int = 3,
                   columns: list[str] | None = None) -> str:
    """Rows `{name: {metric: value}}` as a markdown table; by default the `COLUMNS` that some
    row has, in `COLUMNS` order; a missing or NaN value prints as "-"."""
    cols = columns or [c for c in COLUMNS if any(c in r for r in rows.values())]

    def cell(r: dict, c: str) -> str:
        v = r.get(c)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
    lines = [f"| {first} | " + " | ".join(COLUMNS.get(c, c) for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(r, c) for c in cols) + " |"
              for name, r in rows.items()]
    return "\n".join(lines) + "\n"
