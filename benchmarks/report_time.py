"""Report scaling: generate synthetic trees of N runs x E epochs with the real writers
(`snapshot.write_table` / `write_json`, then `snapshot.compact_run` for finished runs, as the
engine does), then time `python -m runner.report` on each in a child process and record its
peak RSS. The tree looks like a sharing x lr x dropout x seed sweep of the seed model: metrics,
params (value, grad with step_var, grad_site with cos_grad, update) and activations, with a few
diverged runs and a few killed ones (per-epoch files only, no compact copy).

Targets: 100 runs x 50 epochs well under a minute; 1000 runs x 20 epochs under 30 s and 3 GB.

    python benchmarks/report_time.py                      # both cases: 100x50 and 1000x20
    python benchmarks/report_time.py --runs 100 --epochs 50
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT  # (puts the repo on sys.path)
from runner import snapshot
from runner.snapshot import QUANTILE_COLUMNS

# The seed model: net.4 and net.7 hold one Linear when tied.
PARAMS = [("net.1.weight", [8, 784]), ("net.1.bias", [8]), ("net.4.weight", [8, 8]), ("net.4.bias", [8]),
          ("net.7.weight", [8, 8]), ("net.7.bias", [8]), ("net.10.weight", [10, 8]), ("net.10.bias", [10])]
LAYERS = ["net.2", "net.5", "net.8"]
LRS = [0.01, 0.05, 0.1, 0.2, 0.5]
DROPOUTS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def _params_rows(tied: bool):
    """(name, kind, site, numel) of one epoch's params rows (epoch >= 1), as the recorder writes them."""
    rows = []
    for name, shape in PARAMS:
        if tied and name.startswith("net.7"):
            continue  # a tied tensor is stored once, under its canonical name
        module = name.rsplit(".", 1)[0]
        numel = int(np.prod(shape))
        rows.append((name, "value", None, numel))
        rows.append((name, "grad", None, numel))
        rows.append((name, "update", None, numel))
        for site in (["net.4", "net.7"] if tied and module == "net.4" else [module]):
            rows.append((name, "grad_site", site, numel))
    return rows


def _write_run(d: Path, i: int, epochs: int, rng: np.random.Generator) -> None:
    tied = i % 2 == 1
    lr, dropout = LRS[(i // 2) % len(LRS)], DROPOUTS[(i // 10) % len(DROPOUTS)]
    seed = i // 100
    # Accuracy rises with lr up to 0.2 and falls with dropout; seeds add noise.
    ceiling = 0.86 - 0.25 * dropout ** 2 - (0.1 if lr == 0.5 else 0.0) - 0.02 * tied + 0.01 * rng.standard_normal()
    diverge_at = None
    if lr == 0.5 and dropout >= 0.8 and seed % 3 == 0:
        diverge_at = min(epochs, 3 + seed % 4)
    killed_at = epochs // 2 if (i % 97 == 5) else None
    last = (diverge_at - 1) if diverge_at else (killed_at or epochs)
    rows = _params_rows(tied)
    k = len(rows)
    numel = np.array([r[3] for r in rows])
    base_norm = np.sqrt(numel) * 0.05 * (1 + rng.random(k))
    for e in range(last + 1):
        t = e / max(epochs, 1)
        sel = [j for j, r in enumerate(rows) if e or r[1] == "value"]  # epoch 0: values only
        kinds = np.array([rows[j][1] for j in sel])
        norm = base_norm[sel] * (1 + t) * np.where(kinds == "value", 1.0, 0.01 + 0.1 * lr * np.exp(-3 * t))
        cols = {"epoch": [e] * len(sel), "name": [rows[j][0] for j in sel], "kind": list(kinds),
                "site": [rows[j][2] for j in sel], "shape": [dict(PARAMS)[rows[j][0]] for j in sel],
                "numel": numel[sel], "norm": norm, "mean": rng.normal(0, 0.01, len(sel)),
                "std": norm / np.sqrt(numel[sel]), "min": -norm, "max": norm, "frac_zero": np.zeros(len(sel)),
                "n_nonfinite": np.zeros(len(sel), dtype=np.int64),
                "cos_grad": np.where(kinds == "grad_site", np.clip(0.6 + 0.3 * rng.standard_normal(len(sel)), -1, 1),
                                     np.nan),
                # B_simple = 256 * step_var / norm^2 grows over training, faster for small lr.
                "step_var": np.where(kinds == "grad", norm ** 2 * (20 + 200 * t / (1 + 10 * lr)) / 256
                                     * np.exp(0.2 * rng.standard_normal(len(sel))), np.nan)}
        cols["cos_grad"] = [None if np.isnan(v) else v for v in cols["cos_grad"]]
        cols["step_var"] = [None if np.isnan(v) else v for v in cols["step_var"]]
        for c in QUANTILE_COLUMNS:
            cols[c] = rng.normal(0, 0.05, len(sel))
        cols["hist_counts"] = [rng.integers(0, 100, 64) for _ in sel]
        cols["hist_edges"] = [np.linspace(-n, n, 65) for n in norm]
        snapshot.write_table(d, "params", e, cols)
        snapshot.write_table(d, "activations", e, {
            "epoch": [e] * 3, "layer": LAYERS, "units": [8] * 3, "examples": [512] * 3,
            "mean": rng.random(3), "var": rng.random(3) * (1 + t), "frac_dead": rng.random(3) * 0.2 * dropout,
            "frac_zero": rng.random(3)})
        if e:
            acc = ceiling * (1 - 0.5 * np.exp(-3 * t)) + 0.005 * rng.standard_normal()
            snapshot.write_table(d, "metrics", e, {
                "epoch": [e] * 4, "split": ["train", "train", "val", "val"], "metric": ["loss", "acc", "loss", "acc"],
                "value": [2.3 * (1 - acc) + 0.1, acc - 0.02, 2.3 * (1 - acc) + 0.12, acc]})
    status = "diverged" if diverge_at else ("running" if killed_at else "completed")
    final = None
    if last and status != "running":
        acc = ceiling * (1 - 0.5 * np.exp(-3 * last / epochs))
        final = {"train_loss": 2.3 * (1 - acc) + 0.1, "train_acc": acc - 0.02, "val_loss": 2.3 * (1 - acc) + 0.12,
                 "val_acc": acc}
    config = {"model": {"name": "mlp", "hidden": [8, 8, 8], "dropout": dropout, "activation": "relu"},
              "sharing": {"name": "all_hidden" if tied else "none", "groups": []},
              "init": {"name": "default", "std": 0.01, "value": 1.0, "rules": []},
              "optim": {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0},
              "data": {"root": "data", "batch_size": 256, "limit": None},
              "trainer": {"epochs": epochs, "diverge_factor": 1000.0}, "seed": seed, "device": "cpu"}
    snapshot.write_json(d / "run.json", {
        "run_id": d.name, "status": status, "config": config, "epochs": epochs, "epochs_completed": last,
        "params": {"unique": 6442 if tied else 6514, "total": 6514},
        "tie_groups": [{"canonical": f"net.4.{p}", "aliases": [f"net.4.{p}", f"net.7.{p}"],
                        "call_sites": ["net.4", "net.7"]} for p in ("weight", "bias")] if tied else [],
        "final": final, "wall_time_s": 10.0, "epoch_times_s": [0.5] * last, "device": "cpu",
        "error": f"diverged at epoch {diverge_at} step 17: loss nan" if diverge_at else None,
        "diverged": {"epoch": diverge_at, "step": 17, "detail": f"epoch {diverge_at} step 17: loss nan"}
        if diverge_at else None})
    if status != "running":  # the engine compacts every run that ends
        snapshot.compact_run(d)


def _write_job(args) -> None:
    root, i, epochs, seed = args
    _write_run(root / f"job{i:04d}", i, epochs, np.random.default_rng([seed, i]))


def make_tree(root: Path, n_runs: int, epochs: int, seed: int = 0) -> None:
    """The tree, written by one process per core (the writers fsync every file: mostly waiting)."""
    from multiprocessing import get_context

    jobs = [(root, i, epochs, seed) for i in range(n_runs)]
    with get_context("fork").Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_job, jobs, chunksize=8)


def time_report(tree: Path, out: Path) -> dict:
    """`python -m runner.report TREE --out OUT` in a child process: wall seconds and peak RSS."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "runner.report", str(tree), "--out", str(out)],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    took = time.perf_counter() - t
    err = child.stderr.read().decode()
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"report failed:\n{err}")
    return {"report_s": round(took, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss: KiB


def run_case(n_runs: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        make_tree(Path(d) / "tree", n_runs, epochs)
        made = time.perf_counter() - t
        result = {"runs": n_runs, "epochs": epochs, **time_report(Path(d) / "tree", Path(d) / "report"),
                  "generate_s": round(made, 2)}
    print(f"report of {n_runs} runs x {epochs} epochs: {result['report_s']:.1f} s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB (tree written in {made:.0f} s)", flush=True)
    return result


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, help="one case of this many runs (default: 100x50 and 1000x20)")
    p.add_argument("--epochs", type=int, default=50)
    a = p.parse_args()
    if a.runs:
        result = run_case(a.runs, a.epochs)
    else:
        # The first case's keys at the top level (run_all.py reads runs / epochs / report_s).
        result = run_case(100, 50)
        result["large"] = run_case(1000, 20)
        print("targets: 100x50 well under 60 s; 1000x20 under 30 s and 3 GB peak RSS")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
