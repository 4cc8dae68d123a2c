"""Sweep speed-up: the same 8-job grid of seed-preset runs (15 epochs, full data) run
sequentially (Hydra's basic launcher) and with the joblib launcher (one worker per core, torch
threads split so workers x threads <= cores), in the same run. Prints both and the ratio.

    python benchmarks/sweep_speedup.py [--epochs 15]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import time_sweep

GRID = ["optim.lr=0.05,0.1", "sharing=none,all_hidden", "seed=0,1"]  # 8 jobs
SWEEP = ["experiment=seed_sharing", *GRID, "device=cpu"]


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=15)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        seq = time_sweep(SWEEP + [f"trainer.epochs={a.epochs}", "hydra/launcher=basic"], Path(d) / "seq")
        par = time_sweep(SWEEP + [f"trainer.epochs={a.epochs}", "hydra/launcher=joblib"], Path(d) / "par")
    result = {"jobs": 8, "epochs": a.epochs, "sequential_s": round(seq, 1), "joblib_s": round(par, 1),
              "speedup": round(seq / par, 2)}
    print(f"8 seed-preset jobs x {a.epochs} epochs: sequential {seq:.1f} s, joblib {par:.1f} s "
          f"-> {seq / par:.2f}x (target >= 1.5x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
