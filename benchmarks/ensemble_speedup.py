"""Ensemble mode speed-up: a 16-job grid on the seed model (4 learning rates x 2 dropouts x
2 seeds, full FashionMNIST) run sequentially (Hydra's basic launcher) and as one batched model
(`hydra/launcher=ensemble`), in the same run. Prints both wall times and the ratio.

    python benchmarks/ensemble_speedup.py [--epochs 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import time_sweep

GRID = ["optim.lr=0.02,0.05,0.1,0.2", "model.dropout=0,0.2", "seed=0,1"]  # 16 jobs
SWEEP = ["experiment=seed_sharing", *GRID]


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    common = [f"trainer.epochs={a.epochs}", f"device={a.device}"]
    with tempfile.TemporaryDirectory() as d:
        seq = time_sweep(SWEEP + common, Path(d) / "seq")
        ens = time_sweep(SWEEP + common + ["hydra/launcher=ensemble"], Path(d) / "ens")
    result = {"jobs": 16, "epochs": a.epochs, "device": a.device, "sequential_s": round(seq, 1),
              "ensemble_s": round(ens, 1), "speedup": round(seq / ens, 2)}
    print(f"16 seed-preset jobs x {a.epochs} epochs on {a.device}: sequential {seq:.1f} s, ensemble {ens:.1f} s "
          f"-> {seq / ens:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
