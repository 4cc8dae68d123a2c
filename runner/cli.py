"""Checks every job of a command before anything runs, so a user mistake ends with one line
on stderr, exit code 2, no traceback and no run directory created or touched.

`guard()` runs before Hydra's own entry point: it composes each job's config the way Hydra
will (the command's overrides, a preset's `hydra.sweeper.params`, the cartesian product of
sweep values), then checks schema, values, dataset, device, and builds the model on the
meta device to find tie and init mistakes.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Tuple

from omegaconf import OmegaConf

from .config import UserError, register_configs
from .paths import register_resolvers

register_resolvers()
register_configs()

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
# Flags after which Hydra prints something instead of running: nothing to check.
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
               "--version", "--resolve", "--package", "-p", "--experimental-rerun"}
_UNSUPPORTED = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def fail(message: str, code: int = 2) -> None:
    message = " ".join(str(message).split())  # always one line
    print(f"paramlab: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _split_argv(argv: List[str]) -> Tuple[bool, List[str], bool]:
    multirun, overrides, skip = False, [], False
    it = iter(argv)
    for a in it:
        if a in ("-m", "--multirun"):
            multirun = True
        elif a in _INFO_FLAGS or a.split("=")[0] in _INFO_FLAGS:
            skip = True
        elif a in _UNSUPPORTED or a.split("=")[0] in _UNSUPPORTED:
            skip = True
            if "=" not in a:
                next(it, None)
        elif a.startswith("-"):
            skip = True  # an option Hydra knows and we don't: let Hydra handle it
        else:
            overrides.append(a)
    return multirun, overrides, skip


def describe_hydra_error(e: BaseException) -> str:
    """One line for an exception raised while composing a config."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from .config import describe_omegaconf_error

    if isinstance(e, MissingConfigException):
        options = getattr(e, "options", None)
        missing = getattr(e, "missing_cfg_file", None) or ""
        text = str(e).splitlines()[0]
        if "/" in missing:
            group, option = missing.rsplit("/", 1)
            allowed = ", ".join(sorted(options)) if options else "(none)"
            return f"{group}={option}: no such option; choose one of: {allowed}"
        return text
    if isinstance(e, OverrideParseException):
        return str(e).splitlines()[0]
    cause = e
    while cause is not None:
        if isinstance(cause, OmegaConfBaseException):
            return describe_omegaconf_error(cause)
        cause = cause.__cause__ or cause.__context__
    first = str(e).strip().splitlines()
    return first[0] if first else type(e).__name__


def _compose(overrides: List[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def expand_jobs(overrides: List[str], multirun: bool) -> Tuple[bool, List[List[str]], object, List[str]]:
    """(is_multirun, job override lists, first config, swept keys) as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    # Compose once with the first value of each sweep to read the preset's hydra settings.
    first_values = [_first_value(o) for o in parsed]
    base = _compose(first_values)
    multirun = multirun or str(base.hydra.mode) == "RunMode.MULTIRUN" or str(base.hydra.mode) == "MULTIRUN"
    if not multirun:
        return False, [overrides], base, []
    params = base.hydra.sweeper.get("params") or {}
    preset = [f"{k}={v}" for k, v in params.items()]
    parsed = parser.parse_overrides(preset + overrides)
    swept = sorted({o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()})
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    return True, [list(j) for j in jobs], base, swept


def _first_value(o) -> str:
    if not o.is_sweep_override():
        return o.input_line
    value = next(iter(o.sweep_string_iterator()))
    return f"{o.get_key_element()}={value}"


def check_job(cfg, checked_data: dict, need_data: bool = True) -> None:
    """Every check that can fail on a user mistake, short of training."""
    from . import data
    from .config import check_schema, validate

    check_schema(cfg)
    validate(cfg)
    root = str(cfg.data.root)
    if need_data and root not in checked_data:
        data.locate(root)
        checked_data[root] = data.dataset_size(root)
    if need_data:
        data.check_limit(cfg.data.limit, checked_data[root])
    from .train import build, resolve_device

    resolve_device(cfg.device)
    build(cfg, device="meta")


def check_writable(key: str, path: str) -> None:
    """The run/sweep directory can be created: its nearest existing ancestor is a writable folder."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{key}={path}: cannot create it, {p} is not a directory; choose another path")
    if not os.access(p, os.W_OK):
        raise UserError(f"{key}={path}: cannot create it, {p} is not writable; choose another path")


def lock_sweep(sweep_dir: Path) -> None:
    """One command at a time per sweep directory: `.paramlab.lock` holds the owner's pid; a lock
    whose process is gone (killed) is taken over. Released when this process exits."""
    import atexit

    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = sweep_dir / ".paramlab.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise UserError(f"another paramlab command (pid {pid}) is running the sweep in {sweep_dir}; "
                                "wait for it, or give this one another hydra.sweep.dir") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        atexit.register(lambda: lock.unlink(missing_ok=True))
        return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def guard(command: str, argv: List[str] | None = None, on_expanded=None) -> None:
    """Check the command line; exit 2 with one line on the first user mistake.

    `on_expanded()` is called once the jobs are known and the sweep's environment is set, before
    the slower checks (model builds import torch): sweep workers can start warming up then."""
    argv = list(sys.argv[1:] if argv is None else argv)
    multirun, overrides, skip = _split_argv(argv)
    if skip:
        return
    try:
        multirun, jobs, base, swept = expand_jobs(overrides, multirun)
    except UserError as e:
        fail(str(e))
    except Exception as e:  # Hydra / OmegaConf composition errors
        fail(describe_hydra_error(e))
    if command != "train":
        multirun = False
        jobs = jobs[:1]
    if multirun and base.sweep.resume not in (None, ""):
        resume = Path(str(base.sweep.resume))
        if not (resume / "sweep.json").is_file():
            fail(f"sweep.resume={str(resume)!r} is not a sweep directory (no sweep.json in it); "
                 "give a directory an earlier `-m` command wrote")
    if multirun:
        from .paths import sweep_dir

        # Read by the directory resolvers in every job, in this process or a worker process.
        os.environ["PARAMLAB_SWEEP_TOTAL"] = str(len(jobs))
        os.environ["PARAMLAB_SWEEP_KEYS"] = json.dumps(swept)
        command_overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
        os.environ["PARAMLAB_SWEEP_DIR"] = sweep_dir(base.sweep.resume, command_overrides)
    if command == "train":
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        try:
            check_writable(key, str(OmegaConf.select(base, key)))
        except UserError as e:
            fail(str(e))
    if on_expanded:
        on_expanded()
    checked_data: dict = {}
    for job in jobs:
        try:
            cfg = _compose(job) if (multirun or job != overrides) else base
            check_job(cfg, checked_data, need_data=command == "train")
        except UserError as e:
            fail(f"{e}" + (f" [job: {' '.join(job)}]" if multirun and len(jobs) > 1 else ""))
        except Exception as e:
            fail(describe_hydra_error(e) + (f" [job: {' '.join(job)}]" if multirun and len(jobs) > 1 else ""))
    if multirun and command == "train":
        try:
            lock_sweep(Path(str(OmegaConf.select(base, "hydra.sweep.dir"))))
        except UserError as e:
            fail(str(e))
