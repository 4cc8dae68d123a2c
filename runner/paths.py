"""OmegaConf resolvers that name run and sweep directories (used by conf/config.yaml).

- `${paramlab_uid:}`: 6 random hex characters, so single runs started in the same second
  get different directories (Hydra's time-stamped names collide).
- `${paramlab_sweep_dir:${sweep.resume},${hydra.overrides.task}}`: the sweep directory,
  `outputs/multirun/<readable slug>-<hash of the command's overrides>`, so the same command
  finds its earlier sweep and a different command never shares one; `sweep.resume=PATH` wins.
- `${paramlab_job_dir:${hydra.overrides.task}}`: a job's directory inside the sweep, named by
  its values of the swept keys (made filesystem-safe).
- `${paramlab_output_subdir:}`: `hydra.output_subdir`, Hydra's record of the command (`.hydra`),
  or null where the job's directory holds a completed run, which is left as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

SWEEP_ROOT = "outputs/multirun"
_UNSAFE = re.compile(r"[^A-Za-z0-9=.,_+\-\[\]]+")
_CLI_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]+")


def slug(text: str, max_len: int = 80) -> str:
    """A filesystem-safe name for `text`, one-to-one: when characters had to be replaced (`/a/b`
    and `/a_b` both read `_a_b`) or the name cut short, a hash of the full text is appended."""
    s = _UNSAFE.sub("_", text).strip("_") or "default"
    if s != text or len(s) > max_len:
        s = s[:max_len - 9] + "~" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s


def sweep_dir(resume, task_overrides) -> str:
    if resume not in (None, "", "None", "null"):
        return str(resume)
    # Hydra resolves this once per job, with that job's overrides; the command's own
    # overrides (set by runner.cli.guard before Hydra starts) name the sweep.
    if os.environ.get("PARAMLAB_SWEEP_DIR"):
        return os.environ["PARAMLAB_SWEEP_DIR"]
    return default_sweep_dir(task_overrides)


def default_sweep_dir(task_overrides) -> str:
    overrides = sorted(str(o) for o in (task_overrides or []) if not str(o).startswith("sweep.resume="))
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    # No '=', ',' or brackets: the path must pass as `sweep.resume=PATH` without quoting.
    readable = "__".join(o.replace("=", "-").replace(",", "+") for o in overrides)
    readable = _CLI_UNSAFE.sub("_", readable).strip("_+-~")[:60].strip("_") or "default"
    return f"{SWEEP_ROOT}/{readable}-{digest}"  # the digest of every override makes it one-to-one


EXCLUDED_FROM_JOB_DIR = ("sweep.resume", "trainer.progress")


def override_key(override: str) -> str:
    """The key an override sets: `+optim.lr=0.1` -> `optim.lr`, `hydra/launcher=basic` -> `hydra/launcher`."""
    return override.split("=", 1)[0].lstrip("+~")


def job_dir(task_overrides) -> str:
    """A job's directory: its values of the swept keys (set by runner.cli.guard), e.g.
    `optim.lr=0.1,sharing=none`; without that, all its overrides."""
    items = sorted(str(o) for o in (task_overrides or []))
    swept = set(json.loads(os.environ.get("PARAMLAB_SWEEP_KEYS") or "[]"))
    chosen = [o for o in items if override_key(o) in swept] or \
        [o for o in items if override_key(o) not in EXCLUDED_FROM_JOB_DIR]
    return slug(",".join(chosen), 150)


def output_subdir() -> Optional[str]:
    """Where Hydra records a job's command in its directory (`.hydra`), or None (no record) where
    that directory holds a completed run: Hydra writes the record before the task starts, so
    otherwise a completed run started again would get its `.hydra/` files rewritten. Hydra reads
    this once the job's directory is set (hydra.runtime.output_dir)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    except Exception:      # not inside a Hydra job (or its directory not set yet)
        return ".hydra"
    from .engine import completed_run

    return None if output_dir and completed_run(output_dir) is not None else ".hydra"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("paramlab_uid"):
        OmegaConf.register_new_resolver("paramlab_uid", lambda: os.urandom(3).hex(), use_cache=True)
        OmegaConf.register_new_resolver("paramlab_sweep_dir", sweep_dir)
        OmegaConf.register_new_resolver("paramlab_job_dir", job_dir)
        OmegaConf.register_new_resolver("paramlab_output_subdir", output_subdir)


def why_not_creatable(path: str) -> Optional[str]:
    """Why folder `path` cannot be used or made (its nearest existing ancestor is not a folder, or
    no folder can be made in it), or None. Tried with a probe folder made and removed: permissions
    alone do not say it (under /proc, on a read-only mount, for root). The folder's access and
    modification times are put back afterwards: an existing run or sweep directory is not touched
    by a command that then stops at a mistake, nor by one that finds its run completed."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a folder"
    try:
        times = p.stat()
        os.rmdir(tempfile.mkdtemp(prefix=".paramlab-probe-", dir=p))
    except OSError as e:
        return f"no folder can be made in {p} ({e.strerror or e})"
    try:
        os.utime(p, ns=(times.st_atime_ns, times.st_mtime_ns))
    except OSError:        # another owner's folder we may write in: its times move, nothing else
        pass
    return None
