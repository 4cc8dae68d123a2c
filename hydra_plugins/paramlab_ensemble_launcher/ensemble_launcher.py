"""`hydra/launcher=ensemble`: run a sweep's compatible jobs as one batched model
(runner.ensemble), each job still getting the run directory the basic launcher would give it.

Hydra finds launchers only in the `hydra_plugins` namespace package, hence this thin module;
the logic lives in runner/ensemble.py."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class EnsembleLauncherConf:
    _target_: str = "hydra_plugins.paramlab_ensemble_launcher.ensemble_launcher.EnsembleLauncher"
    # Largest number of jobs trained together in one batched model.
    max_members: int = 64


ConfigStore.instance().store(group="hydra/launcher", name="ensemble", node=EnsembleLauncherConf,
                             provider="paramlab")


class EnsembleLauncher(Launcher):
    def __init__(self, max_members: int = 64) -> None:
        self.max_members = max_members
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from runner.ensemble import run_jobs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
                cfg.hydra.job.num = idx
            HydraConfig.instance().set_config(cfg)
            run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            jobs.append((list(overrides), cfg, run_dir))
        def run_alone(i: int):
            """A job no other job can share a model with: exactly what the basic launcher does."""
            HydraConfig.instance().set_config(jobs[i][1])
            ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=jobs[i][1],
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            return ret.return_value

        infos = run_jobs(jobs, self.max_members, run_alone)
        returns: List[JobReturn] = []
        for (overrides, cfg, run_dir), info in zip(jobs, infos):
            ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=cfg, working_dir=str(run_dir),
                            task_name=str(cfg.hydra.job.name))
            ret.status = JobStatus.COMPLETED
            ret.return_value = info
            returns.append(ret)
        return returns
