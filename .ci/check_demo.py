"""CI: the claims `make demo` makes in the README, checked on what it wrote (runs/demo/results.json)
with tolerances that hold across seeds and machines: GRPose draws the given pose better than
ControlNet, at least half as well as the real images score, and the base alone does not."""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "runs/demo/results.json"
with open(path) as f:
    ratio = {row: m["ap_vs_real"] for row, m in json.load(f)["methods"].items()}
claims = [("GRPose above ControlNet", ratio["grpose_skeleton"] > ratio["controlnet"]),
          ("GRPose >= 0.5 of the real images' AP", ratio["grpose_skeleton"] >= 0.5),
          ("no pose <= 0.05 of the real images' AP", ratio["no_pose"] <= 0.05)]
print(f"{path}: AP / real AP " + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items()))
for claim, holds in claims:
    print(f"{'ok  ' if holds else 'FAIL'} {claim}")
sys.exit(0 if all(holds for _, holds in claims) else 1)
