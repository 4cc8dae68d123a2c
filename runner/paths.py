"""OmegaConf resolvers that name run and sweep directories (used by conf/config.yaml).

- `${paramlab_uid:}`: 6 random hex characters, so single runs started in the same second
  get different directories (Hydra's time-stamped names collide).
- `${paramlab_sweep_dir:${sweep.resume},${hydra.overrides.task}}`: the sweep directory,
  `outputs/multirun/<readable slug>-<hash of the command's overrides>`, so the same command
  finds its earlier sweep and a different command never shares one; `sweep.resume=PATH` wins.
- `${paramlab_job_dir:${hydra.job.override_dirname}}`: a job's directory inside the sweep,
  named by its overrides (made filesystem-safe).
"""
from __future__ import annotations

import hashlib
import os
import re

SWEEP_ROOT = "outputs/multirun"
_UNSAFE = re.compile(r"[^A-Za-z0-9=.,_+\-\[\]]+")


def slug(text: str, max_len: int = 80) -> str:
    s = _UNSAFE.sub("_", text).strip("_") or "default"
    if len(s) > max_len:
        s = s[:max_len - 9] + "~" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s


def sweep_dir(resume, task_overrides) -> str:
    if resume not in (None, "", "None", "null"):
        return str(resume)
    # Hydra resolves this once per job, with that job's overrides; the command's own
    # overrides (set by runner.cli.guard before Hydra starts) name the sweep.
    if os.environ.get("PARAMLAB_SWEEP_DIR"):
        return os.environ["PARAMLAB_SWEEP_DIR"]
    overrides = sorted(str(o) for o in (task_overrides or []) if not str(o).startswith("sweep.resume="))
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return f"{SWEEP_ROOT}/{slug(','.join(overrides), 60)}-{digest}"


def job_dir(override_dirname) -> str:
    return slug(str(override_dirname or ""), 150)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("paramlab_uid"):
        OmegaConf.register_new_resolver("paramlab_uid", lambda: os.urandom(3).hex(), use_cache=True)
        OmegaConf.register_new_resolver("paramlab_sweep_dir", sweep_dir)
        OmegaConf.register_new_resolver("paramlab_job_dir", job_dir)
