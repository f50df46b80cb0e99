"""The pose-transfer comparison's report: mean +- std over seeds per row, the person's metrics
first (also per pose-change group), the papers' full-image ones next, RePoseDM's flow against
the keypoint flow it starts from, and the answers to the comparison's questions, each computed
from the table (better / worse, inside / outside the combined seed spread)."""
from __future__ import annotations

import math

from grpose.demo.transfer_scoring import BACKGROUND, CEILING, FLOOR, GROUPS
from grpose.demo.transfer_stages import GUIDED

COLUMNS = {"person_ssim": "person SSIM", "person_lpips": "person LPIPS",
           "person_feature_distance": "person feat. dist. (LPIPS proxy)",
           "colour_error": "colour error", "ap": "AP",
           "ssim_gaussian": "SSIM (Gaussian)", "ssim_uniform": "SSIM (51 uniform)",
           "psnr": "PSNR", "lpips": "LPIPS", "feature_distance": "feat. dist. (LPIPS proxy)",
           "fid": "FID"}
PERSON_TABLE = ("person_ssim", "person_lpips", "person_feature_distance", "colour_error", "ap")
FULL_TABLE = ("ssim_gaussian", "ssim_uniform", "psnr", "lpips", "feature_distance", "fid")
HIGHER = ("person_ssim", "ssim_gaussian", "ssim_uniform", "psnr", "ap")
SOURCE_METHODS = ("source_unaligned", "reposedm", "reference_attention", GUIDED)
DESIGNS = ("source_unaligned", "reposedm", "reference_attention")


def cell(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "—"
    digits = 2 if abs(mean) >= 10 else 4 if abs(mean) < 1 else 3
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def table(means: dict, stds: dict, counts: dict, keys: tuple[str, ...], title=None) -> str:
    cols = [k for k in keys if all(k in m for m in means.values())]
    head = [title(k) if title else COLUMNS[k] for k in cols]
    lines = ["| row | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
    for row, m in means.items():
        lines.append(f"| {row} | " + " | ".join(cell(m[c], stds[row][c], counts[row])
                                                for c in cols) + " |")
    return "\n".join(lines) + "\n"


def group_table(means: dict, stds: dict, counts: dict) -> str:
    """Person SSIM, the person distance and the colour error per pose-change group."""
    metrics = [k for k in ("person_ssim", "person_lpips", "person_feature_distance",
                           "colour_error") if all(f"{k}/small" in m for m in means.values())]
    keys = tuple(f"{k}/{g}" for k in metrics for g in GROUPS)

    def title(key):
        metric, group = key.split("/")
        return f"{COLUMNS[metric]}: {group}"
    return table(means, stds, counts, keys, title)


def better(key: str, a: float, b: float) -> bool:
    return (a > b) if key.split("/")[0] in HIGHER else (a < b)


def compare(means, stds, a: str, b: str, key: str) -> tuple[bool, bool, str]:
    """(a better than b, by more than the combined spread, a phrase)."""
    ma, mb = means[a][key], means[b][key]
    spread = math.hypot(stds[a].get(key, 0.0), stds[b].get(key, 0.0))
    wins = better(key, ma, mb)
    outside = abs(ma - mb) > spread
    return wins, wins and outside, (f"{ma:.4g} vs {mb:.4g} ({'better' if wins else 'worse'}, "
                                    f"{'outside' if outside else 'inside'} the spread "
                                    f"{spread:.3g})")


def person_keys(means: dict) -> list[str]:
    distance = "person_lpips" if "person_lpips" in means[FLOOR] else "person_feature_distance"
    return ["person_ssim", distance, "colour_error"]


def answers(means: dict, stds: dict, rows: list[str]) -> list[str]:
    """The comparison's questions, answered from the numbers."""
    lines, keys = [], person_keys(means)
    for ref in (BACKGROUND, FLOOR):
        if ref in means and CEILING in means:
            res = [compare(means, stds, CEILING, ref, k) for k in keys]
            lines.append(f"- The VAE ceiling {'beats' if all(r[0] for r in res) else 'does not beat'}"
                         f" '{ref}' on every person metric: " + "; ".join(
                             f"{COLUMNS[k]} {r[2]}" for k, r in zip(keys, res)))
    if "pose_only" in rows:
        for row in (r for r in SOURCE_METHODS if r in rows):
            res = [compare(means, stds, row, "pose_only", k) for k in keys[1:]]
            verdict = "beats" if all(r[1] for r in res) else "does not beat"
            lines.append(f"- {row} {verdict} pose_only beyond the seed spread on the person "
                         "distance and the colour error: " + "; ".join(
                             f"{COLUMNS[k]} {r[2]}" for k, r in zip(keys[1:], res)))
    sources = [r for r in SOURCE_METHODS if r in rows]
    if sources and FLOOR in means:
        best = min(sources, key=lambda r: means[r][keys[1]])
        res = [compare(means, stds, best, FLOOR, k) for k in keys]
        lines.append(f"- The best source method by the person distance, {best}, "
                     f"{'beats' if all(r[0] for r in res) else 'does not beat'} '{FLOOR}' on "
                     "every person metric: " + "; ".join(
                         f"{COLUMNS[k]} {r[2]}" for k, r in zip(keys, res)))
    designs = [r for r in DESIGNS if r in rows]
    for group in ("large", "flip"):
        group_keys = [f"{k}/{group}" for k in keys if f"{k}/{group}" in means[designs[0]]] \
            if designs else []
        for key in group_keys:
            ranked = sorted(designs, key=lambda r: means[r][key],
                            reverse=key.split("/")[0] in HIGHER)
            lead = compare(means, stds, ranked[0], ranked[1], key) if len(ranked) > 1 else None
            lines.append(f"- {COLUMNS[key.split('/')[0]]} on the {group}-change pairs, best "
                         "first: " + ", ".join(f"{r} {means[r][key]:.4g}" for r in ranked)
                         + (f" (first vs second: {lead[2]})" if lead else ""))
    return lines


def flow_lines(flows: dict[int, dict]) -> list[str]:
    """RePoseDM's flow per seed: its mean magnitude and the keypoint flow's, in latent cells."""
    return [f"- seed {seed}: mean |flow| {f['flow_abs']:.2f} cells, keypoint flow "
            f"{f['keypoint_flow_abs']:.2f}, learned refinement {f['refinement_abs']:.2f}"
            for seed, f in sorted(flows.items())]
