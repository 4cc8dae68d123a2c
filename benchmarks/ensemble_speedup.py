"""Grid speed-up, whole command, CPU (or --device cuda): the 18-job `lr_dropout_grid` preset
(tied vs untied x 3 learning rates x 3 dropout rates, full snapshots, full FashionMNIST) with the
default ensemble launcher (two ensembles of 9, side by side) against Hydra's basic launcher
(the same jobs one after another), in the same run. Prints both wall times and the ratio.

    python benchmarks/ensemble_speedup.py [--epochs 10] [--device cpu] [--eager] [--repeats 1]

With --repeats N the two commands alternate N times (the machine's speed drifts between minutes):
each pair's ratio is printed, and the result is the ratio of the medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import time_sweep

SWEEP = ["experiment=lr_dropout_grid"]


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eager", action="store_true", help="trainer.compile=false (no CUDA graphs) for both launchers")
    p.add_argument("--repeats", type=int, default=1, help="alternate the two commands this many times")
    a = p.parse_args()
    common = [f"trainer.epochs={a.epochs}", f"device={a.device}"] + (["trainer.compile=false"] if a.eager else [])
    pairs = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.repeats):
            ens = time_sweep(SWEEP + common, Path(d) / f"ens{r}")
            seq = time_sweep(SWEEP + common + ["hydra/launcher=basic"], Path(d) / f"seq{r}")
            pairs.append((ens, seq))
            if a.repeats > 1:                          # progress, on stderr (stdout: the result lines)
                print(f"  pair {r + 1}: basic {seq:.1f} s, ensemble {ens:.1f} s -> {seq / ens:.2f}x", file=sys.stderr,
                      flush=True)
    ens, seq = statistics.median(e for e, _ in pairs), statistics.median(s for _, s in pairs)
    result = {"jobs": 18, "epochs": a.epochs, "device": a.device, "compile": None if a.device == "cpu" else not a.eager, "basic_s": round(seq, 1),
              "ensemble_s": round(ens, 1), "speedup": round(seq / ens, 2), "repeats": a.repeats,
              "pair_speedups": [round(s / e, 2) for e, s in pairs]}
    medians = (f" (medians of {a.repeats} pairs; each pair: "
               + ", ".join(f"{x}x" for x in result["pair_speedups"]) + ")") if a.repeats > 1 else ""
    print(f"lr_dropout_grid, 18 jobs x {a.epochs} epochs on {a.device}: basic launcher {seq:.1f} s, ensemble "
          f"launcher {ens:.1f} s -> {seq / ens:.2f}x{medians} (target >= 4x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
