"""Sweeps: distinct run dirs + sweep.json, failure isolation and exit code, resume skipping
completed jobs, launcher configs, presets, sweep directory naming. (16 parallel joblib jobs:
test_reliability.py.)"""
import json
from pathlib import Path

import pytest

from runner.paths import sweep_dir
from runner.sweep import job_runs

from conftest import CONF, run_cli, stamps

FAULT = """
import errno, sys
from runner import snapshot
real = snapshot.prepare_table
def flaky(run_dir, table, epoch, columns):
    write = real(run_dir, table, epoch, columns)
    if 'optim.lr=0.1,sharing=none' in str(run_dir) and epoch == 1:
        def full():
            raise OSError(errno.ENOSPC, 'No space left on device')
        return full
    return write
snapshot.prepare_table = flaky
from runner.cli import main
sys.argv = ['runner.train'] + sys.argv[1:]
main()
"""


def test_sweep_isolates_failures_and_resumes(tmp_path, data_root):
    args = ["-m", "hydra/launcher=basic", "optim.lr=0.1,10000", "sharing=none,all_hidden", f"data.root={data_root}",
            "trainer.epochs=2", "data.batch_size=64", "trainer.progress=false", "device=cpu"]
    r = run_cli("-c", FAULT, *args, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # one job failed
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    statuses = {j["dir"]: j["status"] for j in json.loads((sweep / "sweep.json").read_text())["jobs"]}
    assert statuses == {"optim.lr=0.1,sharing=all_hidden": "completed", "optim.lr=0.1,sharing=none": "failed",
                        "optim.lr=10000,sharing=all_hidden": "diverged", "optim.lr=10000,sharing=none": "diverged"}
    failed = json.loads((sweep / "optim.lr=0.1,sharing=none" / "run.json").read_text())
    assert failed["error"] == "OSError: No space left on device" and failed["epochs_completed"] == 0
    assert "Traceback" in (sweep / "optim.lr=0.1,sharing=none" / "error.log").read_text()
    assert "4/4 done" in r.stdout

    # Same command again (no fault): the completed job is left as it is, the others run again.
    done = sweep / "optim.lr=0.1,sharing=all_hidden"
    assert (done / ".hydra" / "overrides.yaml").is_file()           # the basic launcher's record of the job
    before = stamps(done)
    r = run_cli("-m", "runner.train", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert stamps(done) == before                  # not one file or folder of it rewritten, .hydra/ included
    assert r.stdout.count("already completed") == 1 and "skip optim.lr=0.1,sharing=all_hidden: already" in r.stdout
    assert "paramlab: completed optim.lr=0.1,sharing=all_hidden" not in r.stdout    # one line for a skipped job
    assert "paramlab: completed optim.lr=0.1,sharing=none" in r.stdout
    assert list((tmp_path / "outputs" / "multirun").iterdir()) == [sweep]
    statuses = {j["_dir"]: j["status"] for j in job_runs(sweep)}
    assert statuses["optim.lr=0.1,sharing=none"] == "completed"

    # `-m sweep.resume=DIR` alone re-creates the recorded sweep: completed jobs are left alone.
    r = run_cli("-m", "runner.train", "-m", f"sweep.resume={sweep}", "trainer.compile=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr      # how jobs run (trainer.compile, the launcher) may be given
    assert r.stdout.count("already completed") == 2
    assert sorted(j["_dir"] for j in job_runs(sweep)) == sorted(statuses)  # no job of another config appeared
    r = run_cli("-m", "runner.train", "-m", f"sweep.resume={sweep}", "optim.lr=0.3", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "optim.lr=0.3 cannot change it" in r.stderr


def test_sweep_dir_names():
    a = sweep_dir(None, ["optim.lr=0.1,0.2", "sharing=none,all_hidden"])
    assert a == sweep_dir(None, ["sharing=none,all_hidden", "optim.lr=0.1,0.2"])  # same grid, same dir
    assert a != sweep_dir(None, ["optim.lr=0.1,0.3", "sharing=none,all_hidden"])
    assert a.startswith("outputs/multirun/optim.lr-0.1+0.2__sharing-none+all_hidden-")
    assert sweep_dir("/x/y", ["a=1"]) == "/x/y"


@pytest.mark.parametrize("launcher", ["joblib", "submitit_slurm", "submitit_local"])
def test_launcher_configs_compose(launcher):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()


def test_every_yaml_composes():
    """Every option of every config group and every preset composes and validates."""
    from hydra import compose, initialize_config_dir
    from runner.config import check_schema, validate
    root = Path(CONF)
    overrides = [[f"{p.parent.name}={p.stem}"] for p in sorted(root.glob("*/*.yaml"))
                 if p.parent.name != "experiment"]
    overrides += [[f"experiment={p.stem}"] for p in sorted((root.parent / "experiments").glob("*.yaml"))]
    overrides += [["sharing=groups", "model=mlp"]]
    overrides = [o + ["model._target_=mymodels.Net"] if o == ["model=custom"] else o for o in overrides]
    assert len(overrides) >= 18
    for o in overrides:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(config_name="config", overrides=o)
        check_schema(cfg)
        validate(cfg)


def test_job_dirs_are_one_to_one(monkeypatch):
    """Values that read the same once made file names (`/a/b`, `/a_b`) get distinct directories."""
    from runner.paths import job_dir
    monkeypatch.setenv("PARAMLAB_SWEEP_KEYS", '["data.root"]')
    a, b = job_dir(["data.root=/a/b"]), job_dir(["data.root=/a_b"])
    assert a != b and a.startswith("data.root=_a_b~") and b.startswith("data.root=_a_b~")
    assert job_dir(["optim.lr=0.1"]) == "optim.lr=0.1"  # a safe name stays as it is (no hash)
    assert sweep_dir(None, ["data.root=/a/b"]) != sweep_dir(None, ["data.root=/a_b"])


def test_parallel_jobs_spread_over_gpus(monkeypatch):
    import torch
    from runner.sweep import job_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [job_device("auto", i) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert job_device("cpu", 3) == "cpu" and job_device("cuda:1", 0) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert job_device("cuda", 5) == "cuda"


def test_worker_count_follows_joblib(monkeypatch):
    """One rule for the joblib pre-warm, job threads and the ensemble launcher: joblib's n_jobs."""
    import os
    from runner.sweep import worker_count
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [worker_count(n, 20) for n in (-1, None, 0, -2, -8, 3)] == [8, 8, 8, 7, 1, 3]
    assert worker_count(-1, 3) == 3 and worker_count(16, 5) == 5 and worker_count(2, 0) == 1
    # The ensemble launcher's worker processes: the command's own process runs one ensemble when
    # each has a process of its own; one process in all needs no worker.
    from runner.sweep import ensemble_pool
    assert [ensemble_pool(-1, g) for g in (1, 2, 8, 20)] == [0, 1, 7, 8]
    assert ensemble_pool(1, 5) == 0 and ensemble_pool(2, 2) == 1 and ensemble_pool(2, 5) == 2


def test_joblib_launcher_reuses_the_prewarmed_workers():
    """The joblib launcher's jobs run in the workers warmed while the command was checked: loky
    reuses a pool only when asked with the same arguments (warmed with others, a joblib sweep
    started a fresh pool, every worker importing torch again)."""
    import os
    from pathlib import Path

    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    from runner import sweep

    def children():
        mine = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == os.getpid() and fields[0] != "Z":
                    mine.append(int(entry.name))
        return set(mine)

    args = {"n_jobs": 2, "backend": None, "prefer": "processes", "require": None, "verbose": 0, "timeout": None,
            "pre_dispatch": "2*n_jobs", "batch_size": "auto", "temp_folder": None, "max_nbytes": None,
            "mmap_mode": "r"}                           # hydra/launcher=joblib's settings, n_jobs 2
    get_reusable_executor().shutdown(wait=True)     # no pool from an earlier test
    try:
        sweep.prewarm_workers(2, None, args)
        sweep._PREWARM[-1].join(120)
        warmed = children()
        assert len(warmed) >= 2
        job_args = {**args, "backend": "loky"}
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
        process_joblib_cfg(job_args)                # as the launcher calls joblib
        Parallel(**job_args)(delayed(os.getpid)() for _ in range(4))
        assert children() == warmed
    finally:
        get_reusable_executor().shutdown(wait=True)


def test_progress_counts_finished_jobs():
    from runner.sweep import progress
    assert progress({"completed": 2, "diverged": 1, "failed": 1, "pending": 3, "running": 1}) == "4/8 done"
    assert progress({}) == "0/0 done"


def test_group_key_keeps_compile_apart():
    """Jobs differing in a member key (lr) or in a key that changes nothing (progress) share an
    ensemble; jobs differing in trainer.compile do not (an ensemble runs with one of them)."""
    from runner.sweep import group_key
    base = {"trainer": {"compile": True, "progress": True, "epochs": 2}, "optim": {"lr": 0.1}, "seed": 0}

    def variant(section, key, value):
        v = json.loads(json.dumps(base))
        v[section][key] = value
        return group_key(v)

    assert group_key(base) == variant("optim", "lr", 0.2) == variant("trainer", "progress", False)
    assert group_key(base) != variant("trainer", "compile", False)
    assert group_key(base) != variant("trainer", "epochs", 3)



@pytest.mark.parametrize("overrides, expected", [
    ([], (0, True)),                                                             # one run: here
    (["-m", "sharing=none,all_hidden", "optim.lr=0.1,0.5"], (1, True)),          # 2 ensembles: one here, one in a worker
    (["-m", "sharing=none,all_hidden,groups", "optim.lr=0.1,0.5"], (2, False)),  # 3 ensembles: all in the 2 workers
    (["-m", "hydra/launcher=basic", "optim.lr=0.1,0.5"], (0, True)),
    (["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0.1,0.5"], (2, False)),
])
def test_command_warms_the_processes_that_will_train(overrides, expected, monkeypatch):
    """Where the command warms up (workers started early; pyarrow/pandas and the dataset in its own
    process only when that process trains a job itself)."""
    import os

    from runner.cli import Plan, _processes, expand_jobs

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    multirun, jobs, base, _, _ = expand_jobs([o for o in overrides if o != "-m"], "-m" in overrides)
    assert _processes(Plan(multirun, jobs, [], base, overrides)) == expected


def test_a_job_config_the_checks_composed_is_handed_to_the_launcher_once():
    """The ensemble launcher composes each job again with its hydra.* overrides first: it gets the
    config the command's checks composed (once), the same as a fresh composition."""
    from omegaconf import OmegaConf

    from runner.cli import COMPOSER, _job_key, expand_jobs

    expand_jobs(["optim.lr=0.3"], False)                        # a new command: nothing handed over
    checked = COMPOSER.compose(["sharing=none", "optim.lr=0.1", "hydra.sweep.dir=/tmp/x", "hydra.job.chdir=false"])
    launcher = COMPOSER.compose(["hydra.job.chdir=false", "hydra.sweep.dir=/tmp/x", "sharing=none", "optim.lr=0.1"])
    again = COMPOSER.compose(["hydra.job.chdir=false", "hydra.sweep.dir=/tmp/x", "sharing=none", "optim.lr=0.1"])
    assert launcher is checked and again is not checked
    assert OmegaConf.to_container(again) == OmegaConf.to_container(checked)
    assert list(checked.hydra.overrides.task) == ["sharing=none", "optim.lr=0.1"]
    assert _job_key(["optim.lr=0.1", "optim.lr=0.2"]) is None    # a repeated key: order matters, no hand-over
    assert _job_key(["a=1", "b=2"]) != _job_key(["b=2", "a=1"])


@pytest.mark.parametrize("args, multirun", [
    (["experiment=lr_dropout_grid"], False), (["optim.lr=0.1,0.2"], True), ([], False),
    (["hydra.mode=RUN", "optim.lr=0.1,0.2"], True), (["sharing=none,all_hidden", "optim.lr=0.1,0.2"], True),
    (["experiment=lr_dropout_grid,seed_sharing"], True), (["experiment=seed_sharing,lr_dropout_grid"], True)])
def test_hydra_gets_the_mode_it_would_compose(args, multirun):
    """main() hands Hydra the run mode from guard()'s composition instead of letting Hydra compose
    the whole config once more to read it: it must be what Hydra reads itself (None when no config
    sets it: a plan's own multirun flag instead made every job of a `-m` grid think it ran alone;
    a sweep over presets whose first sets hydra.mode: Hydra, leaving sweeps out, reads None; without
    -m that command is a mistake, test_errors)."""
    from hydra import initialize_config_dir
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    from runner.cli import CONF_DIR, Plan, _known_mode, expand_jobs

    is_multirun, jobs, base, _, mode = expand_jobs(args, multirun)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        composed = hydra.get_mode(config_name="config", overrides=args)
        with _known_mode(Plan(is_multirun, jobs, [], base, args, mode)):
            given = hydra.get_mode(config_name="config", overrides=args)
        assert Hydra.get_mode(hydra, config_name="config", overrides=args) == composed   # restored
    assert given == composed


def test_pool_stops_once_its_last_ensemble_ends():
    """The launcher stops its worker pool as soon as the last ensemble handed to it ends (its
    processes exit while the command's own process still trains), not before: fails if the pool
    stops after the first of two, or is left running for the command's end to stop."""
    import time

    from joblib.externals.loky import get_reusable_executor

    from runner.launcher import _stop_when_done

    executor = get_reusable_executor(max_workers=2, timeout=30)
    short, long = executor.submit(time.sleep, 0.05), executor.submit(time.sleep, 1.5)
    _stop_when_done(executor, [short, long])
    short.result()
    time.sleep(0.2)
    assert not executor._flags.shutdown and long.running()       # one still running: the pool stays
    long.result()
    deadline = time.time() + 10
    while executor._processes and time.time() < deadline:
        time.sleep(0.02)
    assert executor._flags.shutdown and not executor._processes


def test_a_glob_over_a_groups_options_expands_as_hydra_does():
    from runner.cli import expand_jobs
    multirun, jobs, _, swept, _ = expand_jobs(["model=glob(*mlp)", "seed=0,1"], True)
    assert multirun and swept == ["model", "seed"]
    assert jobs == [["model=mlp", "seed=0"], ["model=mlp", "seed=1"], ["model=nest_mlp", "seed=0"],
                    ["model=nest_mlp", "seed=1"]]
