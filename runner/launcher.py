"""The ensemble launcher (`hydra/launcher=ensemble`, the default for `-m`): the jobs of a grid
that differ only in learning rate, momentum, weight decay, dropout, init or seed train together
as one batched model (runner.engine.run_members); groups that cannot share a model (other
widths, sharing, models, optimizers, ...) run side by side on the cores, one process each.

Every job keeps its own run directory, run.json (with `ensemble` = {size, members}) and tables,
and on the CPU the same numbers as the job run alone. A member that diverges is frozen and
recorded while the others go on; a member whose own files fail fails alone; an exception in the
shared computation fails the members still running, whose finished epochs stay on disk and
continue from their checkpoints when the same command runs again.

Hydra finds launchers only in the `hydra_plugins` namespace package: hydra_plugins/
paramlab_ensemble_launcher holds a three-line subclass of `EnsembleLauncherBase`.
"""
from __future__ import annotations

import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict


@dataclass
class EnsembleLauncherConf:
    _target_: str = "hydra_plugins.paramlab_ensemble_launcher.ensemble_launcher.EnsembleLauncher"
    # Largest number of jobs trained together in one batched model.
    max_members: int = 64
    # Groups run side by side in this many processes (-1: one per core, at most one per group).
    n_jobs: int = -1


@dataclass
class PlannedSweeperConf:
    """Hydra's basic sweeper (the same `params`), without its second composition of every job."""
    _target_: str = "hydra_plugins.paramlab_ensemble_launcher.ensemble_launcher.PlannedSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


def register() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="ensemble", node=EnsembleLauncherConf, provider="paramlab")
    store.store(group="hydra/sweeper", name="paramlab", node=PlannedSweeperConf, provider="paramlab")


class PlannedSweeperBase(Sweeper):
    """Hydra's basic sweeper, minus `validate_batch_is_legal`: that composes every job's config
    once more (~60 ms each: seconds for a seeded grid) only to find mistakes the command's own
    checks (runner.cli.guard) have already ruled out for every job before any started. (It wraps
    a BasicSweeper rather than subclassing it: Hydra's plugin scan may load that class twice.)"""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        self.inner = BasicSweeper(max_batch_size=max_batch_size, params=params)
        self.inner.validate_batch_is_legal = lambda batch: None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.inner.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]):
        return self.inner.sweep(arguments)


class EnsembleLauncherBase(Launcher):
    def __init__(self, max_members: int = 64, n_jobs: int = -1) -> None:
        self.max_members, self.n_jobs = max_members, n_jobs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.utils import configure_log, setup_globals

        from .cli import COMPOSER, job_dir, outcome_line
        from .sweep import progress, refresh_sweep_json

        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        hydra_overrides = list(self.config.hydra.overrides.hydra)
        jobs: List[Tuple[List[str], DictConfig, Path]] = []
        for offset, overrides in enumerate(job_overrides):
            cfg = COMPOSER.compose(hydra_overrides + list(overrides))
            OmegaConf.copy_cache(from_config=self.config, to_config=cfg)
            with open_dict(cfg):
                cfg.hydra.job.num = initial_job_idx + offset
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{initial_job_idx + offset}"
            jobs.append((list(overrides), cfg, job_dir(cfg)))
        planned = _PLANNED.pop((_dirs(jobs), self.max_members, self.n_jobs), None)
        groups, workers, threads, own, calls = planned or _plan(jobs, self.max_members, self.n_jobs)
        sizes = "+".join(str(len(g)) for g in groups)
        side = f", {workers} side by side ({threads} thread{'s' * (threads > 1)} each)" if workers > 1 else ""
        print(f"paramlab: {len(jobs)} jobs as {len(groups)} ensemble{'s' * (len(groups) > 1)} ({sizes}){side}",
              flush=True)
        infos: List[Optional[dict]] = [None] * len(jobs)

        def done(members: List[int], outcome) -> None:
            results, error, skipped = outcome
            done_text = progress(refresh_sweep_json(sweep_dir))
            if error:
                print(f"paramlab: {error}", flush=True)
            for k, (i, info) in enumerate(zip(members, results or [None] * len(members))):
                infos[i] = info
                if info is not None and k not in skipped:     # a skipped job has said so (the engine's `skip` line)
                    print(outcome_line(info, jobs[i][2].name, done_text), flush=True)

        if workers > 1:
            from concurrent.futures import as_completed, wait

            from .sweep import interrupt_workers, workers as pool

            executor = pool(workers - own)
            handed = {_key(call): _PRELAUNCHED.pop(_key(call)) for call in calls[own:] if _key(call) in _PRELAUNCHED}
            if _PRELAUNCHED:    # handed out as another grouping (not expected): they end before any other
                wait(list(_PRELAUNCHED.values()))           # starts (their finished runs are then left as they are)
                _PRELAUNCHED.clear()
            futures = {handed.get(_key(call)) or executor.submit(run_group, *call): members
                       for members, call in zip(groups[own:], calls[own:])}
            if planned:                    # (this launch has the whole sweep: Hydra's batches do not match)
                _stop_when_done(executor, list(futures))
            try:
                if own:
                    done(groups[0], run_group(*calls[0]))
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except KeyboardInterrupt:
                interrupt_workers(executor)
                raise
        else:
            for members, call in zip(groups, calls):
                done(members, run_group(*call))
        returns: List[JobReturn] = []
        for (overrides, cfg, run_dir), info in zip(jobs, infos):
            ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=cfg, working_dir=str(run_dir),
                            task_name=str(cfg.hydra.job.name))
            ret.status = JobStatus.COMPLETED
            ret.return_value = info
            returns.append(ret)
        return returns


def _stop_when_done(executor, futures: List[Future]) -> None:
    """Once the last of the workers' ensembles has ended (every ensemble of the sweep is handed out:
    the pool gets nothing more; not so for Hydra's batches, hydra.sweeper.max_batch_size, whose
    next launch wants the same warm pool), stop the pool from a thread, so that its processes exit
    while this one still trains its own ensemble: the command's end (sweep.stop_workers) then finds
    them gone instead of waiting ~60 ms for them (measured; a worker usually ends first: it starts
    first)."""
    import threading

    left, lock = [len(futures)], threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:            # (not in this callback's thread: that may be the pool's own manager thread)
            threading.Thread(target=executor.shutdown, kwargs={"wait": True}, name="paramlab-stop-pool",
                             daemon=True).start()

    for future in futures:
        future.add_done_callback(one_done)


def _plan(jobs: Sequence[Tuple[List[str], DictConfig, Path]], max_members: int, n_jobs: int):
    """(groups of job indices, processes, threads each, 1 if this process runs the first group
    itself else 0, run_group's arguments per group) for jobs [(overrides, config, run dir)]."""
    from .config import plain_config, without_hydra
    from .sweep import ensemble_pool, group_jobs, job_device, worker_count

    groups = group_jobs([plain_config(cfg) for _, cfg, _ in jobs], max_members)
    workers = worker_count(n_jobs, len(groups))
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    # This process runs the first ensemble itself when every ensemble has a process of its own
    # (one torch import and dataset load fewer: runner.cli preloads its dataset); with more
    # ensembles than processes, all go to the workers, which take the next as they finish.
    own = workers - ensemble_pool(n_jobs, len(groups))
    if own and len(groups) > 1:
        # This process starts its ensemble last (Hydra sets the sweep up first: ~0.15 s after the
        # workers'): it takes the one with the least work, the workers the others.
        groups.insert(0, groups.pop(min(range(len(groups)), key=lambda g: _work([jobs[i][1] for i in groups[g]]))))
    calls = []
    for g, members in enumerate(groups):
        cfgs = [without_hydra(jobs[i][1]) for i in members]
        if workers > 1:
            for cfg in cfgs:
                OmegaConf.update(cfg, "device", job_device(str(cfg.device), g), merge=False)
        calls.append((cfgs, [jobs[i][2] for i in members], [jobs[i][0] for i in members],
                      threads if workers > 1 else None))
    return groups, workers, threads, own, calls


def _work(cfgs: Sequence[DictConfig]) -> Tuple[int, bool]:
    """An ensemble's work, to compare: member-epochs x training examples (data.limit, or a whole
    dataset), then whether it ties tensors (their call sites are captured: ~2% slower per step,
    measured on lr_dropout_grid's two halves)."""
    examples = sum(int(c.trainer.epochs) * (int(c.data.limit) if c.data.limit else 10 ** 9) for c in cfgs)
    return examples, any(str(c.sharing.name) != "none" for c in cfgs)


def _key(call: tuple) -> Tuple[str, ...]:
    return tuple(str(d) for d in call[1])          # an ensemble's run directories


def _dirs(jobs) -> Tuple[str, ...]:
    return tuple(str(run_dir) for _, _, run_dir in jobs)


# The worker processes' ensembles handed out by prelaunch, by their run directories.
_PRELAUNCHED: Dict[Tuple[str, ...], Future] = {}
# prelaunch's plan (_plan's result) by (the jobs' run directories, max_members, n_jobs): the launcher
# takes it rather than planning the same jobs again (~35 ms of the master's start, measured).
_PLANNED: Dict[tuple, tuple] = {}


def prelaunch(plan) -> Optional[DictConfig]:
    """The worker processes' ensembles handed out as soon as the command's checks have passed (the
    jobs are valid, their configs composed), before Hydra sets the sweep up again and calls the
    launcher (~0.3 s on 2 cores, which the warm workers spent waiting). The launcher finds them
    by their run directories and hands out only what is not yet running. Returns the first config
    of the ensemble this process will train itself (None: not known here)."""
    from .cli import hydra_override
    from .sweep import launcher_kind, workers as pool

    launcher = plan.base.hydra.launcher
    if not plan.multirun or launcher_kind(launcher) != "ensemble":
        return None
    batch = OmegaConf.select(plan.base, "hydra.sweeper.max_batch_size")
    if batch and int(batch) < len(plan.jobs):
        return None     # Hydra launches the sweep in batches, each planned by itself: nothing ahead
    jobs = [([o for o in job if not hydra_override(o)], cfg, run_dir)
            for job, cfg, run_dir in zip(plan.jobs, plan.configs, plan.run_dirs)]
    _PLANNED.clear()
    planned = _plan(jobs, int(launcher.max_members), launcher.get("n_jobs"))
    _PLANNED[(_dirs(jobs), int(launcher.max_members), launcher.get("n_jobs"))] = planned
    groups, workers, threads, own, calls = planned
    if workers > 1:
        executor = pool(workers - own)
        for call in calls[own:]:
            _PRELAUNCHED[_key(call)] = executor.submit(run_group, *call)
    return calls[0][0][0] if own or workers == 1 else None


def run_group(cfgs, run_dirs, overrides, threads: Optional[int]):
    """One ensemble (in this process or a worker): ([run.json per member] or None, error line,
    the members found completed and left as they are)."""
    from .config import UserError, one_line
    from .engine import completed_run, run_members
    from .sweep import exit_quickly_when_stopped, interruptible, watch_master

    watch_master()
    exit_quickly_when_stopped()
    if threads:
        import torch

        torch.set_num_threads(threads)
    names = ", ".join(Path(d).name for d in run_dirs)
    if len(cfgs) > 1:
        print(f"paramlab: ensemble of {len(cfgs)}: {names}", flush=True)
    elif completed_run(run_dirs[0]) is None:           # (a completed one: the engine's `skip` line says so)
        print(f"paramlab: start {names} -> {run_dirs[0]}", flush=True)
    try:
        with interruptible():
            result = run_members(cfgs, run_dirs, overrides, ensemble=True)
    except UserError as e:
        return None, f"error: {e} [jobs: {names}]", set()
    except Exception as e:  # recorded as failed in each member's run.json, with error.log (an interrupt,
        # Ctrl-C, still ends the command: its members are recorded as failed and continue when it runs again)
        return None, f"ensemble failed: {one_line(e)} (traceback in each member's error.log) [jobs: {names}]", set()
    return result.infos, None, result.skipped
