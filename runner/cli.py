"""The command line: checks every job of a command before anything runs, then hands over to
Hydra, whose task function (here) runs one job through the engine.

`guard()` composes each job's config the way Hydra will (the command's overrides, a preset's
`hydra.sweeper.params`, the cartesian product of sweep values), then checks schema, values,
dataset, device, the model (built on the meta device; a user's model built and run once on a
probe batch), and the run directories (another config there, or a live process writing it).
A user mistake ends with one line on stderr, exit code 2, nothing created or touched. Anything
else is a bug: exit code 1, one line naming a file that holds the traceback.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from .config import UserError, one_line, register_configs
from .launcher import register as register_launcher
from .paths import override_key, register_resolvers, why_not_creatable

register_resolvers()
register_configs()
register_launcher()  # hydra/launcher=ensemble (the default), also before Hydra's plugin scan has run

CONF_DIR = str(Path(__file__).resolve().parent / "conf")
# Flags after which Hydra prints something instead of running: nothing to check.
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
               "--version", "--resolve", "--package", "-p", "--experimental-rerun"}
_UNSUPPORTED = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
_ALONE_FLAGS = {"--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}   # Hydra: not with --multirun


def fail(message: str, code: int = 2) -> None:
    message = " ".join(str(message).split())  # always one line
    print(f"paramlab: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def report_bug(error: BaseException) -> None:
    """A bug, not the user's mistake: the traceback into a file, one line naming it, exit 1."""
    text = "".join(traceback.format_exception(error))
    try:
        fd, name = tempfile.mkstemp(prefix="paramlab-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        path: Optional[Path] = Path(name)
    except OSError:
        path = None
    where = f"traceback in {path}" if path else "traceback could not be written"
    fail(f"internal error ({one_line(error)}); this is a bug in paramlab, not in your command; {where}", code=1)


def is_user_error(e: BaseException) -> bool:
    """Mistakes in the command or config: ours (UserError) and Hydra's/OmegaConf's composition errors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cause: Optional[BaseException] = e
    while cause is not None:
        if isinstance(cause, (UserError, HydraException, OmegaConfBaseException)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


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

    if isinstance(e, UserError):
        return str(e)
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
        lines = [line for line in str(e).splitlines() if not line.startswith(("See https://", "Error parsing override"))]
        return (f"{getattr(e, 'override', None) or 'an override'}: cannot read it ({'; '.join(lines) or 'parse error'}); "
                "check its brackets, quotes and commas, and quote a value holding '=' or ',' (e.g. "
                "'hydra.run.dir=\"a=1,b\"')")
    cause: Optional[BaseException] = e
    override = None                       # "Error merging override KEY=VALUE": the override at fault
    while cause is not None:
        if str(cause).startswith("Error merging override "):
            override = str(cause).splitlines()[0][len("Error merging override "):]
        if isinstance(cause, OmegaConfBaseException):
            key = str(getattr(cause, "full_key", None) or "")
            if override and (not key or key.isdigit()):   # the error names no key of the config: the override's
                name = override.split("=", 1)[0]
                return override + describe_omegaconf_error(cause, key=name)[len(name):]
            return describe_omegaconf_error(cause)
        cause = cause.__cause__ or cause.__context__
    first = str(e).strip().splitlines()
    return first[0] if first else type(e).__name__


class Composer:
    """Job configs as Hydra composes them, but fast: one full composition per distinct set of
    config-group choices (model=..., sharing=...), then the job's value overrides applied with
    Hydra's own override code (a full composition costs ~60 ms; a 90-job grid would spend
    seconds twice over)."""

    def __init__(self):
        self.cache: dict = {}
        self.groups: Optional[set] = None
        # Job configs the command's checks composed, by their overrides, each handed out once more:
        # to the ensemble launcher, which would compose the same job again (~7 ms a job; the same
        # overrides, the hydra.* ones first). Cleared when the next command is planned.
        self.composed: dict = {}

    def _full(self, overrides: Sequence[str]):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        if GlobalHydra.instance().is_initialized():  # inside Hydra's own run (a launcher): its loader
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)

    def chooses_group(self, override) -> bool:
        """A parsed override that picks a config group's option (model=..., hydra/launcher=...)."""
        if self.groups is None:   # the config groups: conf/'s folders (Hydra's own are hydra/...)
            self.groups = {d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()} | {"experiment"}
        return override.key_or_group.lstrip("+~") in self.groups or override.key_or_group.startswith("hydra/")

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        job = _job_key(overrides)
        if job in self.composed:
            return self.composed.pop(job)

        parsed = OverridesParser.create().parse_overrides(list(overrides))
        group = [o for o in parsed if self.chooses_group(o)]
        values = [o for o in parsed if o not in group]
        key = tuple(sorted(o.input_line for o in group))
        if key not in self.cache:
            try:
                self.cache[key] = self._full(list(key))
            except Exception as e:  # Hydra checks the overrides as it composes: their mistakes are the user's
                raise UserError(describe_hydra_error(e)) from e
        cfg = self.cache[key].copy()
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        with_values = [o.input_line for o in parsed if not o.key_or_group.startswith(("hydra.", "hydra/"))]
        OmegaConf.update(cfg, "hydra.overrides.task", with_values, merge=False)
        if job is not None:
            self.composed[job] = cfg
        return cfg


def _job_key(overrides: Sequence[str]) -> Optional[tuple]:
    """The same job whatever the place of its hydra.* overrides: (the others in order, the hydra.*
    ones sorted); None when a key repeats (then the order of all of them matters)."""
    keys = [override_key(o) for o in overrides]
    if len(set(keys)) != len(keys):
        return None
    return (tuple(o for o in overrides if not hydra_override(o)),
            tuple(sorted(o for o in overrides if hydra_override(o))))


def hydra_override(override: str) -> bool:
    """An override of Hydra's own settings (hydra.sweep.dir=..., hydra/launcher=...), not the task's."""
    return override_key(override).startswith(("hydra.", "hydra/"))


COMPOSER = Composer()


def expand_jobs(overrides: List[str], multirun: bool):
    """(is_multirun, job override lists, first config, swept keys, hydra.mode) as Hydra's basic
    sweeper expands them and as Hydra reads the mode."""
    with _override_parser(overrides) as parser:
        return _expand_jobs(parser, overrides, multirun)


@contextmanager
def _override_parser(overrides: List[str]):
    """Hydra's override parser; with the config tree's loader where a sweep globs a group's
    options (model=glob(*mlp)), as Hydra's own sweeper has it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not any("glob(" in o for o in overrides):
        yield OverridesParser.create()
    elif GlobalHydra.instance().is_initialized():
        yield OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    else:
        from hydra import initialize_config_dir

        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            yield OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())


def _expand_jobs(parser, overrides: List[str], multirun: bool):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parser.parse_overrides(overrides)
    COMPOSER.composed.clear()                 # a new command: the last one's job configs are not its
    # Compose once with the first value of each sweep to read the preset's hydra settings.
    base = COMPOSER.compose([_first_value(o) for o in parsed])
    mode = _hydra_mode(parsed, base)
    multirun = multirun or str(mode) in ("RunMode.MULTIRUN", "MULTIRUN")
    if not multirun:
        swept = next((o.input_line for o in parsed if o.is_sweep_override()), None)
        if swept:
            raise UserError(f"{swept} gives several values, which only a grid runs: give one value (a grid: "
                            "python -m runner.train -m ...)")
        return False, [overrides], COMPOSER.compose(overrides), [], mode
    params = base.hydra.sweeper.get("params") or {}
    preset = [f"{k}={v}" for k, v in params.items()]
    parsed = parser.parse_overrides(preset + overrides)
    swept = sorted({o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()})
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    return True, [list(j) for j in jobs], base, swept, mode


def _hydra_mode(parsed, base: DictConfig):
    """`hydra.mode` as Hydra reads it to choose between a run and a multirun: its composition leaves
    the sweeps out, `base` took each one's first value; the two differ only where a sweep picks
    config groups (a preset that sets hydra.mode) or Hydra's own settings: then composed without them."""
    if any(o.is_sweep_override() and (COMPOSER.chooses_group(o) or hydra_override(o.input_line)) for o in parsed):
        base = COMPOSER.compose([o.input_line for o in parsed if not o.is_sweep_override()])
    return OmegaConf.select(base, "hydra.mode")


def _first_value(o) -> str:
    if not o.is_sweep_override():
        return o.input_line
    value = next(iter(o.sweep_string_iterator()), None)
    if value is None:
        raise UserError(f"{o.input_line}: this sweep has no values, so the grid has no jobs; give the key one "
                        "value or more")
    return f"{o.get_key_element()}={value}"


def check_job(cfg, checked_data: dict, need_data: bool = True) -> None:
    """Every check that can fail on a user mistake, short of training."""
    from .config import check_schema, validate
    from .engine import build, resolve_device

    check_schema(cfg)
    validate(cfg)
    resolve_device(cfg.device)
    if cfg.model.name == "custom":
        check_model(cfg)          # a user's model: built for real and run once
    else:
        build(cfg, device="meta")
    if need_data:                 # the size read where the set lies: nothing written (prepare_data writes)
        from . import data

        root = str(cfg.data.root)
        if root not in checked_data:
            checked_data[root] = data.source_size(root)          # None: only a download has the set
        if checked_data[root] is not None:
            data.check_limit(cfg.data.limit, checked_data[root])


def unused_settings(configs: Sequence[DictConfig]) -> List[str]:
    """Settings the jobs give that change nothing, one line each (a note, not an error: a grid
    over optimizers or models gives every job the same settings): optim.momentum with Adam, and
    the width list (model.hidden / model.channels) a built-in model does not take."""
    from .config import WIDTH_KEY

    notes = []
    momenta = sorted({float(c.optim.momentum) for c in configs if c.optim.name == "adam" and c.optim.momentum})
    if momenta:
        notes.append(f"optim.momentum={','.join(f'{m:g}' for m in momenta)} does nothing with optim=adam (Adam has "
                     "no momentum setting: its moment decay rates are fixed, betas 0.9 and 0.999)")
    unused: dict = {}
    for c in configs:
        name = str(c.model.name)
        if name == "custom":                              # every key is the user's callable's argument
            continue
        for key in ("hidden", "channels"):
            value = c.model.get(key)
            if value is not None and WIDTH_KEY.get(name) != key:
                unused.setdefault((key, name), []).append(str(list(value)).replace(" ", ""))
    for (key, name), values in sorted(unused.items()):
        takes = f"model.{WIDTH_KEY[name]}" if name in WIDTH_KEY else "no width list: its layers are fixed"
        notes.append(f"model.{key}={','.join(sorted(set(values)))} does nothing with model={name} (it takes {takes})")
    return notes


def prepare_data(checked_data: dict, configs: Sequence[DictConfig], jobs: Sequence[List[str]], multirun: bool) -> None:
    """After every job's other checks passed: each data.root's set decompressed (or downloaded)
    into it, so a command with a mistake in any job writes nothing; a set that only a download
    gave has its size checked now."""
    from . import data

    for root, size in checked_data.items():
        data.locate(root)
        if size is None:
            checked_data[root] = data.source_size(root)
            for cfg, job in zip(configs, jobs):
                if str(cfg.data.root) == root:
                    with _naming(job if multirun and len(jobs) > 1 else None):
                        data.check_limit(cfg.data.limit, checked_data[root])


def check_model(cfg) -> None:
    """Build the model on the CPU and run a probe batch through paramlab's batched forward."""
    import torch

    from .batched import Members, check_batchable
    from .engine import build

    state = torch.random.get_rng_state()
    try:
        model, tie_map = build(cfg)
        check_batchable(Members([model], tie_map, "cpu", [0]))
    finally:
        torch.random.set_rng_state(state)


def check_launcher_settings(base: DictConfig) -> None:
    """The grid's launcher and sweeper numbers: a UserError naming the key and the values it takes."""
    def number(key: str, ok, allowed: str) -> None:
        value = OmegaConf.select(base, key, default=None)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and ok(value)):
            raise UserError(f"{key}={value!r} is not allowed; use {allowed}")

    number("hydra.launcher.max_members", lambda v: v >= 1, "a whole number >= 1 (members per ensemble)")
    number("hydra.launcher.n_jobs", lambda v: v != 0, "a whole number >= 1, or -1 for every core (-2: all but one)")
    number("hydra.sweeper.max_batch_size", lambda v: v >= 1, "a whole number >= 1, or null for all jobs at once")


def check_writable(key: str, path: str) -> None:
    """The run/sweep directory can be used or created (paths.why_not_creatable)."""
    if not path.strip():
        raise UserError(f"{key} is empty; give a directory, e.g. {key}=outputs/my_run")
    reason = why_not_creatable(path)
    if reason:
        raise UserError(f"{key}={path}: cannot create it, {reason}; choose another path")


class Plan:
    """What guard() found: the jobs and where they go."""

    def __init__(self, multirun: bool, jobs: List[List[str]], configs: List[DictConfig], base: DictConfig,
                 argv: List[str], mode=None):
        self.multirun, self.jobs, self.configs, self.base, self.argv = multirun, jobs, configs, base, argv
        self.mode = mode          # hydra.mode as Hydra reads it (a RunMode or None)
        self.run_dirs: List[Path] = []    # each job's run directory (train commands), as guard() checked it


def guard(command: str, argv: Optional[List[str]] = None, on_expanded=None) -> Optional[Plan]:
    """Check the command line; exit 2 with one line on the first user mistake, exit 1 (traceback
    in a file) on a bug. Returns the plan (None for commands Hydra answers itself, e.g. --help).

    `on_expanded(plan)` is called once the jobs are known and the sweep's environment is set,
    before the slower checks (model builds import torch): worker processes can start warming then."""
    try:
        plan = _guard(command, list(sys.argv[1:] if argv is None else argv), on_expanded)
        if plan is not None and argv is None:
            sys.argv[1:] = plan.argv   # e.g. `-m sweep.resume=DIR` becomes the recorded command
        return plan
    except SystemExit:
        raise
    except Exception as e:
        if is_user_error(e):
            fail(describe_hydra_error(e))
        report_bug(e)
    return None


def _guard(command: str, argv: List[str], on_expanded) -> Optional[Plan]:
    from .engine import check_run_dir
    from .lock import DirLock

    multirun, overrides, skip = _split_argv(argv)
    shown = [a for a in argv if a.split("=")[0] in _ALONE_FLAGS]
    if multirun and shown:
        raise UserError(f"{shown[0]} shows one thing and cannot be combined with -m; drop one of them")
    if skip:
        return None
    resume = [o for o in overrides if o.startswith("sweep.resume=")]
    if command == "train" and resume:
        from .sweep import resume_argv

        argv = resume_argv(argv, resume[0].split("=", 1)[1])
        multirun, overrides, _ = _split_argv(argv)
    if command != "train" and multirun:
        raise UserError(f"{command} shows one model and takes no -m/--multirun: drop it and give one value per key")
    multirun, jobs, base, swept, mode = expand_jobs(overrides, multirun)
    if command != "train" and multirun:        # hydra.mode=MULTIRUN: Hydra would refuse the sweep in a run
        with _override_parser(overrides) as parser:
            several = [o.input_line for o in parser.parse_overrides(overrides) if o.is_sweep_override()]
        if several:
            raise UserError(f"{command} shows one model: {several[0]} gives several values; give one")
    if command != "train":
        multirun, jobs = False, jobs[:1]
    plan = Plan(multirun, jobs, [], base, argv, mode)
    if multirun:
        check_launcher_settings(base)
        from .paths import sweep_dir
        from .sweep import MASTER_PID

        os.environ[MASTER_PID] = str(os.getpid())  # workers exit when this process is gone
        # Read by the directory resolvers in every job, in this process or a worker process.
        os.environ["PARAMLAB_SWEEP_KEYS"] = json.dumps(swept)
        command_overrides = [o for o in overrides if not hydra_override(o)]
        os.environ["PARAMLAB_SWEEP_DIR"] = sweep_dir(base.sweep.resume, command_overrides)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    raw = str(OmegaConf.select(COMPOSER.compose(jobs[0]) if multirun else base, key))
    target = Path(raw)
    if command == "train":
        check_writable(key, raw)
        if multirun:
            from .lock import check_unlocked

            check_unlocked(target, "sweep directory")
    if on_expanded:
        on_expanded(plan)
    from .sweep import import_torch

    import_torch()                 # the checks build models; here, with the collector paused
    checked_data: dict = {}
    for job in jobs:
        try:
            cfg = COMPOSER.compose(job) if multirun else base
            check_job(cfg, checked_data, need_data=command == "train")
            if command == "train":
                run_dir = job_dir(cfg) if multirun else target
                check_run_dir(cfg, run_dir, f"job directory {run_dir}" if multirun else f"hydra.run.dir={run_dir}")
                plan.run_dirs.append(run_dir)
        except Exception as e:
            if not is_user_error(e):
                raise
            suffix = f" [job: {' '.join(job)}]" if multirun and len(jobs) > 1 else ""
            raise UserError(describe_hydra_error(e) + suffix) from None
        plan.configs.append(cfg)
    for note in unused_settings(plan.configs):
        print(f"paramlab: note: {note}", file=sys.stderr, flush=True)
    if command == "train":
        prepare_data(checked_data, plan.configs, jobs, multirun)
    if multirun and command == "train":
        _HELD.append(DirLock(target, "sweep directory").acquire())   # held until this command ends
        from .sweep import write_sweep_json

        write_sweep_json(target, [o for o in argv if o not in ("-m", "--multirun")],
                         [{"dir": d.name, "overrides": list(j)} for d, j in zip(plan.run_dirs, jobs)])
    return plan


_HELD: list = []


@contextmanager
def _naming(job: Optional[List[str]]):
    """A UserError raised inside names the job it is about (a grid's)."""
    try:
        yield
    except UserError as e:
        if job is None:
            raise
        raise UserError(f"{e} [job: {' '.join(job)}]") from None


def job_dir(cfg) -> Path:
    """A sweep job's run directory (its config composed with Hydra's node)."""
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


# ------------------------------------------------------------------------------------ the task

def outcome_line(info: dict, label: str, progress: Optional[str] = None) -> str:
    """`paramlab: completed <overrides>: val_acc=..., 10/10 epochs, 3.1 s [k/N done]`."""
    final = info.get("final") or {}
    acc = f"val_acc={final['val_acc']:.4f}" if final else "no completed epoch"
    done = f" [{progress}]" if progress is not None else ""
    return (f"paramlab: {info['status']} {label}: {acc}, {info['epochs_completed']}/{info['epochs']} epochs, "
            f"{info.get('wall_time_s') or 0:.1f} s{done}")


def task(cfg: DictConfig) -> Optional[dict]:
    """The Hydra task: one run in Hydra's output directory (basic and joblib launchers)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .engine import completed_run, run_members
    from .sweep import job_device, job_threads, progress, refresh_sweep_json, watch_master

    watch_master()   # in a joblib worker: exit if the command is killed
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    label = run_dir.name if multirun else ",".join(overrides) or "(defaults)"
    threads = job_threads(hc)
    if threads:
        import torch

        torch.set_num_threads(threads)
        OmegaConf.update(cfg, "device", job_device(str(cfg.device), int(hc.job.num)), merge=False)
    if completed_run(run_dir) is None:   # (a completed one: the engine's `skip` line says so)
        print(f"paramlab: start {label} -> {run_dir}", flush=True)
    counts = None
    try:
        result = run_members([cfg], [run_dir], [overrides])
    except UserError as e:
        print(f"paramlab: error: {e}", file=sys.stderr, flush=True)
        if multirun:
            return None
        sys.exit(2)
    except KeyboardInterrupt:       # Ctrl-C ends the command (main says so); the run is marked failed
        raise
    except BaseException as e:
        print(f"paramlab: failed {label}: {one_line(e)} (traceback in {run_dir / 'error.log'})",
              file=sys.stderr, flush=True)
        if multirun:
            return None
        sys.exit(1)
    finally:
        if multirun:                # in whichever process ran the job
            counts = refresh_sweep_json(run_dir.parent)
    info = result.infos[0]
    if 0 not in result.skipped:        # a run left as it is has said so (the engine's `skip` line)
        print(outcome_line(info, label, progress(counts) if multirun else None), flush=True)
    if info["status"] != "completed" and not multirun:
        where = f" (traceback in {run_dir / 'error.log'})" if info["status"] == "failed" else ""
        print(f"paramlab: run {info['status']}: {info['error']}{where}", file=sys.stderr, flush=True)
        if info["status"] == "failed":
            sys.exit(1)
    return info


def main() -> None:
    """`python -m runner.train [overrides]` / `paramlab-train`."""
    import hydra

    from .sweep import launcher_kind, prewarm_workers, quick_exit, stop_workers, sweep_exit_code

    def warm(plan: Plan) -> None:
        n, _ = _processes(plan)
        if n > 0:
            launcher = OmegaConf.to_container(plan.base.hydra.launcher, resolve=True)
            joblib_args = {k: v for k, v in launcher.items() if k != "_target_"} \
                if launcher_kind(plan.base.hydra.launcher) == "joblib" else None
            prewarm_workers(n, _data_of(plan.base), joblib_args)

    plan = guard("train", on_expanded=warm)
    if plan is not None:
        from .launcher import prelaunch

        first = prelaunch(plan)   # the workers' ensembles start now, while Hydra sets the sweep up
        if _processes(plan)[1]:
            from .engine import preload_data     # torch is imported: the checks built the models

            # The dataset of this process's first run (its ensemble's, or the first job's), in a
            # thread while Hydra composes the jobs again.
            preload_data(*_data_of(first if first is not None else plan.configs[0]), background=True)
    hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    # An absolute path: works for `python -m`, console scripts and `python -c` alike.
    try:
        with _known_mode(plan):
            hydra_main(task)()
    except KeyboardInterrupt:
        print("paramlab: interrupted; runs not finished are marked failed and continue after their last "
              "completed epoch when the same command runs again", file=sys.stderr, flush=True)
        sys.exit(130)
    stop_workers()
    quick_exit(sweep_exit_code())


@contextmanager
def _known_mode(plan: Optional[Plan]):
    """Hydra composes the whole config once only to read `hydra.mode` (its get_mode), then again
    for the run (~0.08 s each, in the master's start, which the command waits on); guard() has read
    it the same way (expand_jobs): Hydra gets it from the plan. Commands guard() leaves to Hydra
    (--help, ...) as they were."""
    if plan is None:
        yield
        return
    from hydra._internal.hydra import Hydra

    own = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: plan.mode
    try:
        yield
    finally:
        Hydra.get_mode = own


def _data_of(cfg) -> tuple:
    """(data.root, data.limit, device) of a composed config, for preloading the dataset."""
    return str(cfg.data.root), cfg.data.limit, str(cfg.device)


def _processes(plan: Plan) -> Tuple[int, bool]:
    """(worker processes the command's launcher will start, whether this process trains jobs
    itself), to warm both up early."""
    if not plan.multirun:
        return 0, True
    from .sweep import MEMBER_KEYS, ensemble_pool, launcher_kind, worker_count

    kind = launcher_kind(plan.base.hydra.launcher)
    n_jobs = plan.base.hydra.launcher.get("n_jobs")
    if kind == "joblib":
        n = worker_count(n_jobs, len(plan.jobs))
        return (n, False) if n > 1 else (0, True)
    if kind == "ensemble":
        # Jobs that differ in more than member keys (lr, seed, ...) are separate ensembles; the
        # configs are not composed yet, so count the distinct other overrides.
        groups = len({tuple(sorted(o for o in job if override_key(o) not in MEMBER_KEYS)) for job in plan.jobs})
        pool = ensemble_pool(n_jobs, groups)
        return pool, pool < worker_count(n_jobs, groups)
    return 0, True

