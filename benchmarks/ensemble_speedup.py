"""Ensemble mode speed-up: a 16-job grid on the seed model (4 learning rates x 2 dropouts x
2 seeds, full FashionMNIST) run sequentially (Hydra's basic launcher) and as one batched model
(`hydra/launcher=ensemble`), in the same run. Prints both wall times and the ratio.

    python benchmarks/ensemble_speedup.py [--epochs 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ["optim.lr=0.02,0.05,0.1,0.2", "model.dropout=0,0.2", "seed=0,1"]  # 16 jobs


def timed(args, sweep_dir: Path) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "runner.train", "-m", "experiment=seed_sharing", *GRID, *args,
                        "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return time.perf_counter() - t


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    common = [f"trainer.epochs={a.epochs}", f"device={a.device}"]
    with tempfile.TemporaryDirectory() as d:
        seq = timed(common, Path(d) / "seq")
        ens = timed(common + ["hydra/launcher=ensemble"], Path(d) / "ens")
    result = {"jobs": 16, "epochs": a.epochs, "device": a.device, "sequential_s": round(seq, 1),
              "ensemble_s": round(ens, 1), "speedup": round(seq / ens, 2)}
    print(f"16 seed-preset jobs x {a.epochs} epochs on {a.device}: sequential {seq:.1f} s, ensemble {ens:.1f} s "
          f"-> {seq / ens:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
