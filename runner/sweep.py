"""Sweep bookkeeping: `sweep.json` (written when a sweep starts, refreshed after every job),
resuming a sweep from it, grouping jobs into ensembles, the per-job thread budget, spreading
jobs over GPUs, and the command's exit code (1 if any job failed).

Layering: the command line (runner.cli, the launchers) calls this; this calls the engine.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.experimental.callback import Callback

from .config import UserError
from .engine import comparable, read_json

SWEEP_JSON = "sweep.json"
_STATE = {"failed": 0}
# Keys in which the jobs of one ensemble may differ (everything else must be equal).
MEMBER_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "model.dropout", "seed", "init")
# Overrides that may stand beside `sweep.resume=DIR`: how to run the jobs, not which.
RESUME_EXTRAS = ("hydra/launcher=", "hydra.launcher.", "trainer.progress=", "trainer.compile=")


# ------------------------------------------------------------------------------------ sweep.json

def write_sweep_json(sweep_dir: Path, command: Sequence[str], jobs: Sequence[dict]) -> None:
    """Record a sweep before its first job starts: the command's overrides (what `sweep.resume`
    re-creates) and every job's directory and overrides."""
    from .snapshot import write_json

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"sweep_dir": str(sweep_dir), "overrides": list(command), "n_jobs": len(jobs),
              "jobs": [dict(j) for j in jobs]}
    _fill_statuses(sweep_dir, record)
    write_json(sweep_dir / SWEEP_JSON, record)


def read_sweep_json(sweep_dir: Path) -> Optional[dict]:
    return read_json(Path(sweep_dir) / SWEEP_JSON)


def refresh_sweep_json(sweep_dir: Path) -> Dict[str, int]:
    """Rewrite sweep.json's job statuses from the jobs' run.json files (any process may call it:
    each write is a whole file renamed into place). Returns the status counts."""
    from .snapshot import write_json

    sweep_dir = Path(sweep_dir)
    record = read_sweep_json(sweep_dir)
    if record is None:
        return {}
    counts = _fill_statuses(sweep_dir, record)
    try:
        write_json(sweep_dir / SWEEP_JSON, record)
    except OSError:
        pass
    return counts


def _fill_statuses(sweep_dir: Path, record: dict) -> Dict[str, int]:
    """Each job's status, epochs, val_acc and error from its run.json, and the counts, into `record`."""
    counts: Dict[str, int] = {}
    for job in record["jobs"]:
        info = read_json(sweep_dir / job["dir"] / "run.json") or {}
        final = info.get("final") or {}
        job.update(status=info.get("status", "pending"), epochs_completed=info.get("epochs_completed"),
                   val_acc=final.get("val_acc"), error=info.get("error"))
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    record["counts"] = counts
    return counts


def job_runs(sweep_dir: Path) -> List[dict]:
    """run.json of every job directory directly under a sweep directory (`_dir`: its name)."""
    out = []
    for run_json in sorted(Path(sweep_dir).glob("*/run.json")):
        info = read_json(run_json) or {"status": "unreadable"}
        info["_dir"] = run_json.parent.name
        out.append(info)
    return out


def progress(counts: Dict[str, int]) -> str:
    """`k/N done` from sweep.json's status counts (refresh_sweep_json's return)."""
    done = sum(counts.get(s, 0) for s in ("completed", "diverged", "failed"))
    return f"{done}/{sum(counts.values())} done"


def resume_argv(argv: Sequence[str], resume: str) -> List[str]:
    """`-m sweep.resume=DIR` -> the command that made DIR's sweep, into DIR. Besides
    sweep.resume only a launcher choice (`hydra/launcher=...`, `hydra.launcher.*`),
    trainer.progress or trainer.compile may be given: they change how jobs run, not which."""
    record = read_sweep_json(Path(resume))
    if record is None or "overrides" not in record:
        raise UserError(f"sweep.resume={resume!r} is not a sweep directory (no readable sweep.json in it); give a "
                        "directory an earlier `-m` command wrote")
    extras = [a for a in argv if a not in ("-m", "--multirun") and not a.startswith("sweep.resume=")]
    wrong = [a for a in extras if not a.startswith(RESUME_EXTRAS)]
    if wrong:
        raise UserError(f"sweep.resume re-runs the recorded sweep as it was; {' '.join(wrong)} cannot change it "
                        "(only how it runs may be given: hydra/launcher=..., hydra.launcher.*, trainer.progress=, "
                        "trainer.compile=); start a new sweep for other settings")
    recorded = [o for o in record["overrides"] if not o.startswith(("hydra.sweep.dir=",))]
    launcher = [a for a in extras if a.startswith(RESUME_EXTRAS)]
    kept = [o for o in recorded if not any(o.split("=")[0] == a.split("=")[0] for a in launcher)]
    return ["-m", *kept, *launcher, f"hydra.sweep.dir={resume}"]


# ------------------------------------------------------------------------------------ jobs

def worker_count(n_jobs: Optional[int], tasks: int) -> int:
    """Processes running `tasks` side by side under a launcher's `n_jobs`, joblib's way: n >= 1
    that many, -1 (or null, 0) one per core, -2 all cores but one, ...; never more than the tasks."""
    cores = os.cpu_count() or 1
    n = int(n_jobs or -1)
    return max(1, min(tasks, n if n > 0 else cores + 1 + n))


def ensemble_pool(n_jobs: Optional[int], ensembles: int) -> int:
    """Worker processes the ensemble launcher starts for `ensembles` side by side under `n_jobs`:
    when each ensemble gets a process of its own, the command's own process runs one of them
    (one process in all: none, the ensembles run one after another in the command's process)."""
    n = worker_count(n_jobs, ensembles)
    return 0 if n == 1 else n - 1 if n == ensembles else n


def launcher_kind(launcher) -> str:
    """"joblib", "ensemble" or "basic" (Hydra's, or any other) for a hydra.launcher config node."""
    target = str(launcher.get("_target_", ""))
    return "joblib" if "joblib" in target else "ensemble" if "Ensemble" in target else "basic"


def job_threads(hydra_cfg) -> Optional[int]:
    """Torch threads for a job run by the joblib launcher, so jobs x threads <= cores."""
    launcher = hydra_cfg.launcher
    if launcher_kind(launcher) != "joblib":
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // worker_count(launcher.get("n_jobs"), cores))


def job_device(device: str, job_index: int) -> str:
    """`device=auto|cuda` with several GPUs and parallel jobs: job i gets cuda:(i mod GPUs)."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{job_index % count}" if count > 1 else device


def group_key(plain: dict) -> str:
    """Jobs whose configs are equal but for MEMBER_KEYS (and the keys that do not change results)
    can train as one ensemble; an ensemble runs with one trainer.compile, so that one stays a key."""
    c = comparable(plain)
    c["compile"] = bool(plain.get("trainer", {}).get("compile", False))
    for key in MEMBER_KEYS:
        node, *rest = key.split(".")
        (c.get(node, {}) if rest else c).pop(rest[0] if rest else node, None)
    return json.dumps(c, sort_keys=True)


def group_jobs(plains: Sequence[dict], max_members: int) -> List[List[int]]:
    """Indices of jobs, grouped by group_key, in chunks of at most max_members, largest first."""
    groups: Dict[str, List[int]] = {}
    for i, plain in enumerate(plains):
        groups.setdefault(group_key(plain), []).append(i)
    chunks = [members[j:j + max_members] for members in groups.values()
              for j in range(0, len(members), max_members)]
    return sorted(chunks, key=len, reverse=True)


# ------------------------------------------------------------------------------------ callback

class SweepCallback(Callback):
    """At the end of a multirun: refreshes sweep.json, prints the summary and remembers whether
    any job did not complete, for the exit code (each job refreshes sweep.json itself when it
    ends, in whichever process ran it)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        counts = refresh_sweep_json(sweep_dir)
        pending = counts.get("pending", 0) + counts.get("running", 0)
        _STATE["failed"] = counts.get("failed", 0) + pending
        print(f"paramlab: sweep {sweep_dir}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
              + f" ({sum(counts.values())} jobs)", flush=True)


def sweep_exit_code() -> int:
    return 1 if _STATE["failed"] else 0


# ------------------------------------------------------------------------------------ workers

MASTER_PID = "PARAMLAB_MASTER_PID"
_WATCHING: list = []


def _command_pid() -> int:
    """In a worker process of a command: the command's pid; 0 in the command's own process (or
    outside any command)."""
    master = int(os.environ.get(MASTER_PID) or 0)
    return master if master != os.getpid() else 0


def watch_master() -> None:
    """In a worker process: exit as soon as the command that started it is gone (killed), so no
    orphan keeps training and holding run directories; the runs it had continue from their
    checkpoints when the command runs again. Idempotent; nothing in the command's own process."""
    master = _command_pid()
    if not master or _WATCHING:
        return
    import threading
    import time

    def watch() -> None:
        while os.getppid() == master:
            time.sleep(0.2)
        os._exit(1)

    _WATCHING.append(threading.Thread(target=watch, name="paramlab-watch-master", daemon=True))
    _WATCHING[0].start()


def exit_quickly_when_stopped() -> None:
    """In a process of this command's worker pool (nowhere else: its exit code is always 0):
    leave without unloading torch when the pool stops it. Idempotent."""
    if not _command_pid() or _QUICK_EXIT:
        return
    import atexit

    _QUICK_EXIT.append(True)
    atexit.register(_exit_worker)


_QUICK_EXIT: list = []


def _exit_worker() -> None:
    """A pool worker's last step when the pool stops it (its jobs have returned, their files are
    closed; loky's worker loop ends with status 0): Python's exit handlers that matter for a
    worker, then out without unloading torch (~0.5 s, which the command would wait for)."""
    from multiprocessing import util

    util._exit_function()
    _leave(0)


def quick_exit(code: int) -> None:
    """The command's own end: exit handlers, flushed output, then out without the interpreter's
    teardown (~0.5 s of unloading torch and its modules). Every file it wrote is closed by now
    (runs close theirs as each epoch ends) and its workers are stopped (stop_workers)."""
    import atexit

    atexit._run_exitfuncs()
    _leave(code)


def _leave(code: int) -> None:
    """Logs and output flushed, then out with `code`, skipping the interpreter's teardown."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def import_torch() -> None:
    """`import torch` (once per process) with Python's cyclic garbage collector paused, then all the
    process holds so far frozen: never scanned by the collector again. The import makes ~200k
    long-lived objects, and while they grow the collector makes full passes over all of them that
    free nothing (measured in a grid command's checks: 5 passes, 0.26-0.31 s of the master's start,
    where both cores are busy; frozen: 1 pass, 5 ms). Modules, classes and functions stay for the
    process's life anyway; what freezing leaks is what was garbage by then (2000-7000 objects, measured)."""
    if "torch" in sys.modules:
        return
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        import torch  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _warm_worker(data: Optional[tuple]) -> int:
    watch_master()
    exit_quickly_when_stopped()
    import_torch()  # (the import is the point: ~1.5-3 s per fresh process)

    from . import engine, snapshot  # noqa: F401  (snapshot: pyarrow's import, now rather than in a first epoch)

    if data is not None:
        engine.preload_data(*data)
    return os.getpid()


def workers(n_workers: int):
    """The ensemble launcher's pool of worker processes: joblib's reusable loky executor."""
    from joblib.executor import get_memmapping_executor

    return get_memmapping_executor(n_workers, timeout=300)


def prewarm_workers(n_workers: int, data: Optional[tuple] = None, joblib_args: Optional[dict] = None) -> None:
    """Start the worker processes (importing torch and the engine, ~3 s each, then loading
    `data` = (root, limit, device) if given) while the main process checks the command, so they
    are warm when the jobs start. `joblib_args`: the joblib launcher's settings (hydra.launcher
    without _target_), for the workers of that launcher: loky reuses a pool only when it is asked
    for with the same arguments (measured: warmed here with others, every job of a joblib sweep
    ran in freshly started workers, each importing torch again), so those are warmed through
    joblib.Parallel with the launcher's own, in a thread, as hydra_joblib_launcher builds them."""
    if joblib_args is None:
        pool = workers(n_workers)
        for _ in range(n_workers):
            pool.submit(_warm_worker, data)
        return
    import threading

    import joblib._parallel_backends  # noqa: F401  (imported here, not by the thread alongside this one)
    from joblib import Parallel, delayed

    args = {**joblib_args, "backend": "loky"}
    try:
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

        process_joblib_cfg(args)
    except Exception:  # noqa: BLE001 (a warm-up only: without it the launcher starts its own workers)
        pass

    def warm() -> None:
        try:
            Parallel(**args)(delayed(_warm_worker)(data) for _ in range(n_workers))
        except Exception:  # noqa: BLE001
            pass

    _PREWARM.append(threading.Thread(target=warm, name="paramlab-prewarm", daemon=True))
    _PREWARM[-1].start()


_PREWARM: list = []      # the joblib warm-up's thread (tests wait for it)


def stop_workers() -> None:
    """End the worker processes now (they are idle: every job has returned and its files are
    closed), rather than waiting at exit for each to unload torch (~0.5 s)."""
    try:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor   # (private: any surprise only skips this)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=False)
    except Exception:
        pass


def interrupt_workers(executor) -> None:
    """Ctrl-C reached this process alone (`kill -INT PID`, a scheduler): pass it on to the worker
    processes, so their ensembles stop like this one's (runs marked failed, continued by the same
    command) instead of the command waiting for them to finish."""
    import signal

    for pid in list(getattr(executor, "_processes", {}) or {}):
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass


@contextlib.contextmanager
def interruptible():
    """In a worker process: SIGINT interrupts the ensemble it runs, once (Ctrl-C in a terminal
    reaches the workers, and the command passes it on as well); outside its ensembles a worker
    ignores SIGINT, so an interrupt never lands in the pool's own code. Nothing in the command's
    own process."""
    import signal
    import threading

    if not _command_pid() or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # one interrupt per ensemble
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

