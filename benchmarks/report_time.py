"""Report scaling: generate a synthetic tree of N runs x E epochs (run.json + metrics, params,
activations in the real schemas, as a lr x dropout x sharing sweep would), then time
`runner.report` on it. Target: 100 runs x 50 epochs well under a minute.

    python benchmarks/report_time.py [--runs 100] [--epochs 50]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import ROOT  # noqa: F401  (puts the repo on sys.path)
from runner.snapshot import QUANTILE_COLUMNS, SCHEMAS

PARAMS = [("net.1.weight", [8, 784]), ("net.1.bias", [8]), ("net.4.weight", [8, 8]), ("net.4.bias", [8]),
          ("net.10.weight", [10, 8]), ("net.10.bias", [10])]


def _write(path: Path, table: str, cols: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(cols, schema=SCHEMAS[table]), path, compression="zstd")


def make_tree(root: Path, n_runs: int, epochs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lrs, drops = [0.01, 0.05, 0.1, 0.2, 0.5], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for i in range(n_runs):
        tied = i % 2 == 1
        lr, dropout = lrs[(i // 2) % len(lrs)], drops[(i // 10) % len(drops)]
        d = root / f"job{i:03d}"
        acc = 0.5 + 0.3 * rng.random()
        for e in range(epochs + 1):
            names, kinds, sites = [], [], []
            for n, _ in PARAMS:
                names.append(n), kinds.append("value"), sites.append(None)
                if e:
                    names.append(n), kinds.append("grad"), sites.append(None)
                    for s in (["net.4", "net.7"] if tied and n.startswith("net.4") else [n.rsplit(".", 1)[0]]):
                        names.append(n), kinds.append("grad_site"), sites.append(s)
            k = len(names)
            shapes = dict(PARAMS)
            cols = {"epoch": [e] * k, "name": names, "kind": kinds, "site": sites,
                    "shape": [shapes[n] for n in names], "numel": [int(np.prod(shapes[n])) for n in names]}
            for c in ("mean", "std", "norm", "min", "max", "frac_zero", *QUANTILE_COLUMNS):
                cols[c] = rng.random(k)
            cols["n_nonfinite"] = [0] * k
            cols["hist_counts"] = [list(rng.integers(0, 100, 64)) for _ in range(k)]
            cols["hist_edges"] = [list(np.linspace(-1, 1, 65)) for _ in range(k)]
            _write(d / "params" / f"epoch-{e:04d}.parquet", "params", cols)
            _write(d / "activations" / f"epoch-{e:04d}.parquet", "activations", {
                "epoch": [e] * 3, "layer": ["net.2", "net.5", "net.8"], "units": [8] * 3, "examples": [512] * 3,
                "mean": rng.random(3), "var": rng.random(3), "frac_dead": rng.random(3) * 0.2,
                "frac_zero": rng.random(3)})
            if e:
                _write(d / "metrics" / f"epoch-{e:04d}.parquet", "metrics", {
                    "epoch": [e] * 4, "split": ["train", "train", "val", "val"], "metric": ["loss", "acc", "loss", "acc"],
                    "value": [1 / e, acc * (1 - 1 / (e + 1)), 1.1 / e, acc * (1 - 1 / (e + 2))]})
        config = {"model": {"name": "mlp", "hidden": [8, 8, 8], "dropout": dropout, "activation": "relu"},
                  "sharing": {"name": "all_hidden" if tied else "none", "groups": []},
                  "optim": {"name": "sgd", "lr": lr}, "seed": 0}
        (d / "run.json").write_text(json.dumps({
            "run_id": d.name, "status": "completed", "config": config, "epochs": epochs, "epochs_completed": epochs,
            "params": {"unique": 6442 if tied else 6514, "total": 6514},
            "tie_groups": [{"canonical": "net.4.weight", "aliases": ["net.4.weight", "net.7.weight"],
                            "call_sites": ["net.4", "net.7"]}] if tied else [],
            "final": {"train_loss": 0.4, "val_loss": 0.5, "val_acc": acc}, "wall_time_s": 10.0}))


def main() -> dict:
    from runner.report import build_report

    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--epochs", type=int, default=50)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        make_tree(Path(d) / "tree", a.runs, a.epochs)
        made = time.perf_counter() - t
        t = time.perf_counter()
        build_report([Path(d) / "tree"], Path(d) / "report")
        took = time.perf_counter() - t
    result = {"runs": a.runs, "epochs": a.epochs, "report_s": round(took, 2), "generate_s": round(made, 2)}
    print(f"report of {a.runs} runs x {a.epochs} epochs: {took:.1f} s (target: well under 60 s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
