"""Grid speed-up, whole command, CPU (or --device cuda): the 18-job `lr_dropout_grid` preset
(tied vs untied x 3 learning rates x 3 dropout rates, full snapshots, full FashionMNIST) with the
default ensemble launcher (two ensembles of 9, side by side) against Hydra's basic launcher
(the same jobs one after another), in the same run. Prints both wall times and the ratio.

    python benchmarks/ensemble_speedup.py [--epochs 10] [--device cpu] [--eager]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import time_sweep

SWEEP = ["experiment=lr_dropout_grid"]


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eager", action="store_true", help="trainer.compile=false (no CUDA graphs) for both launchers")
    a = p.parse_args()
    common = [f"trainer.epochs={a.epochs}", f"device={a.device}"] + (["trainer.compile=false"] if a.eager else [])
    with tempfile.TemporaryDirectory() as d:
        ens = time_sweep(SWEEP + common, Path(d) / "ens")
        seq = time_sweep(SWEEP + common + ["hydra/launcher=basic"], Path(d) / "seq")
    result = {"jobs": 18, "epochs": a.epochs, "device": a.device, "compile": None if a.device == "cpu" else not a.eager, "basic_s": round(seq, 1),
              "ensemble_s": round(ens, 1), "speedup": round(seq / ens, 2)}
    print(f"lr_dropout_grid, 18 jobs x {a.epochs} epochs on {a.device}: basic launcher {seq:.1f} s, ensemble "
          f"launcher {ens:.1f} s -> {seq / ens:.2f}x (target >= 4x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
