"""Sweep bookkeeping: resume (skip completed jobs), per-job thread budget, `sweep.json`, and
the command's exit code (1 if any job failed)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional

from hydra.experimental.callback import Callback

_STATE = {"failed": 0}
IGNORED_FOR_RESUME = (("sweep",), ("trainer", "progress"))


def _comparable(config: dict) -> dict:
    c = json.loads(json.dumps(config))
    for path in IGNORED_FOR_RESUME:
        node = c
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return c


def completed_with_same_config(run_dir: Path, config: dict) -> bool:
    try:
        with open(Path(run_dir) / "run.json") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return info.get("status") == "completed" and _comparable(info.get("config", {})) == _comparable(config)


def job_threads(hydra_cfg) -> Optional[int]:
    """Torch threads for a job run by the joblib launcher, so jobs x threads <= cores."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return None
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs", -1) or -1
    jobs = cores + 1 + n_jobs if n_jobs < 0 else n_jobs
    return max(1, cores // max(1, jobs))


def job_runs(sweep_dir: Path) -> List[dict]:
    """run.json of every job directory directly under a sweep directory."""
    out = []
    for run_json in sorted(Path(sweep_dir).glob("*/run.json")):
        try:
            with open(run_json) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {"status": "unreadable"}
        info["_dir"] = run_json.parent.name
        out.append(info)
    return out


def progress(sweep_dir: Path) -> str:
    total = os.environ.get("PARAMLAB_SWEEP_TOTAL")
    done = sum(1 for r in job_runs(sweep_dir) if r.get("status") not in ("running", "unreadable"))
    return f"{done}/{total} done" if total else f"{done} done"


class SweepCallback(Callback):
    """Writes `sweep.json` (jobs and statuses) at the end of a multirun and remembers whether
    any job failed, for the exit code."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from .snapshot import write_json

        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = []
        for r in job_runs(sweep_dir):
            final = r.get("final") or {}
            jobs.append({"dir": r["_dir"], "overrides": r.get("overrides", []), "status": r.get("status"),
                         "epochs_completed": r.get("epochs_completed"), "val_acc": final.get("val_acc"),
                         "error": r.get("error")})
        counts: dict = {}
        for j in jobs:
            counts[j["status"]] = counts.get(j["status"], 0) + 1
        expected = int(os.environ.get("PARAMLAB_SWEEP_TOTAL") or len(jobs))
        missing = max(0, expected - len(jobs))
        _STATE["failed"] = counts.get("failed", 0) + counts.get("running", 0) + missing
        if sweep_dir.is_dir():
            write_json(sweep_dir / "sweep.json", {"sweep_dir": str(sweep_dir), "n_jobs": len(jobs),
                                                  "counts": counts, "jobs": jobs})
        print(f"paramlab: sweep {sweep_dir}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
              + (f", {missing} without a run" if missing else ""), flush=True)


def sweep_exit_code() -> int:
    return 1 if _STATE["failed"] else 0


def _warm_worker() -> int:
    import torch  # noqa: F401  (the import is the point: ~3 s per fresh process)

    from . import train  # noqa: F401

    return os.getpid()


def prewarm_joblib_workers(argv: List[str]):
    """With `hydra/launcher=joblib`, start the worker processes (importing torch and paramlab)
    in a background thread while the main process checks the command; joblib's loky backend
    then reuses these warm workers for the jobs. Returns the thread to join, or None."""
    if "hydra/launcher=joblib" not in argv:
        return None
    import threading

    n_jobs = -1
    for a in argv:
        if a.startswith("hydra.launcher.n_jobs="):
            try:
                n_jobs = int(a.split("=", 1)[1])
            except ValueError:
                return None
    workers = os.cpu_count() or 1 if n_jobs < 0 else n_jobs

    def warm() -> None:
        try:
            from joblib import Parallel, delayed

            # The same settings as hydra-joblib-launcher's defaults, so loky reuses the pool.
            Parallel(n_jobs=n_jobs, backend="loky", prefer="processes", max_nbytes=None, timeout=None,
                     pre_dispatch="2*n_jobs", batch_size="auto", verbose=0)(
                delayed(_warm_worker)() for _ in range(workers))
        except Exception:
            pass  # only an optimisation

    thread = threading.Thread(target=warm, daemon=True)
    thread.start()
    return thread
