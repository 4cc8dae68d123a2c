"""Snapshot overhead: epoch time with snapshots off, statistics only, and statistics + full
tensors, for the seed preset and a 784-256-256-10 MLP on full FashionMNIST (CPU), measured in
the same run (modes interleaved). Also the on-disk size per epoch.

    python benchmarks/snapshot_overhead.py [--epochs 4] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import dir_size, make_cfg

MODES = {"off": ["snapshot.enabled=false"], "stats": ["snapshot.tensors=false"], "stats+tensors": []}
MODELS = {"seed preset": ["experiment=seed_sharing"],
          "784-256-256-10": ["model.hidden=[256,256]", "sharing=none"]}


def main() -> dict:
    from runner.engine import run

    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    results = {}
    for model, model_over in MODELS.items():
        times = {m: [] for m in MODES}
        sizes = {}
        for _ in range(a.repeats):
            for mode, mode_over in MODES.items():
                with tempfile.TemporaryDirectory() as d:
                    info = run(make_cfg("device=cpu", f"trainer.epochs={a.epochs}", *model_over, *mode_over),
                               Path(d) / "r")
                    times[mode] += info["epoch_times_s"][1:]
                    sizes[mode] = dir_size(Path(d) / "r") / (a.epochs + 1)
        # min over epochs and repeats: the machine is shared and noisy; the minimum is what a mode costs
        med = {m: min(t) for m, t in times.items()}
        results[model] = {
            "s_per_epoch": {m: round(v, 4) for m, v in med.items()},
            "overhead_stats_pct": round(100 * (med["stats"] / med["off"] - 1), 1),
            "overhead_stats_tensors_pct": round(100 * (med["stats+tensors"] / med["off"] - 1), 1),
            "bytes_per_epoch": {m: int(v) for m, v in sizes.items()},
        }
        r = results[model]
        print(f"{model}: off {med['off']:.3f} s/epoch, stats {med['stats']:.3f} ({r['overhead_stats_pct']:+.1f}%), "
              f"stats+tensors {med['stats+tensors']:.3f} ({r['overhead_stats_tensors_pct']:+.1f}%); "
              f"disk/epoch: stats {sizes['stats'] / 1e3:.0f} kB, stats+tensors {sizes['stats+tensors'] / 1e3:.0f} kB")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
