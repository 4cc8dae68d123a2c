"""Reliability: unwritable output, a kill in the middle of a snapshot write, 16 parallel jobs,
and a property-based fuzz of the config layer (a clean one-line error or a valid config,
never a traceback)."""
import json
import os
import string

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import paths, snapshot
from runner.cli import guard
from runner.sweep import job_runs

from conftest import run_cli


def test_output_dir_not_creatable(data_root, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        guard("train", [f"data.root={data_root}", "hydra.run.dir=/dev/null/run"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("paramlab: error: hydra.run.dir=/dev/null/run: cannot create it, /dev/null "
                                       "is not a folder; choose another path\n")

    def refused(**kwargs):                               # as a non-root user on a read-only folder
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(paths.tempfile, "mkdtemp", refused)
    with pytest.raises(SystemExit):
        guard("train", [f"data.root={data_root}", "-m", "seed=1,2", "hydra.sweep.dir=/tmp/ro/sweep"])
    assert ("hydra.sweep.dir=/tmp/ro/sweep: cannot create it, no folder can be made in /tmp (Permission denied)"
            in capsys.readouterr().err)


def test_a_setting_that_does_nothing_gets_a_note(data_root, capsys):
    """optim.momentum with Adam changes nothing: one note line on stderr (not an error: a grid over
    optimizers gives every job the same momentum), nothing for SGD, whose setting it is."""
    plan = guard("inspect", [f"data.root={data_root}", "optim=adam", "optim.momentum=0.9"])
    assert plan is not None and capsys.readouterr().err == (
        "paramlab: note: optim.momentum=0.9 does nothing with optim=adam (Adam has no momentum setting: its "
        "moment decay rates are fixed, betas 0.9 and 0.999)\n")
    guard("inspect", [f"data.root={data_root}", "optim=sgd", "optim.momentum=0.9"])
    guard("inspect", [f"data.root={data_root}", "optim=adam"])
    guard("inspect", [f"data.root={data_root}", "model=cnn", "model.channels=[4,4]"])
    assert capsys.readouterr().err == ""
    guard("inspect", [f"data.root={data_root}", "model=lenet", "model.hidden=[4]"])
    assert capsys.readouterr().err == ("paramlab: note: model.hidden=[4] does nothing with model=lenet (it takes no "
                                       "width list: its layers are fixed)\n")
    guard("inspect", [f"data.root={data_root}", "model=cnn", "model.hidden=[4, 8]"])
    assert capsys.readouterr().err == ("paramlab: note: model.hidden=[4,8] does nothing with model=cnn (it takes "
                                       "model.channels)\n")


KILL_IN_WRITE = """
import os, sys
from runner import snapshot
real = snapshot._atomic_write
def dying(path, write):
    if path.name == "epoch-0003.parquet" and path.parent.name == "params":
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(b"PAR1 half a file")
        os._exit(137)  # as if SIGKILLed in the middle of the snapshot write
    return real(path, write)
snapshot._atomic_write = dying
from runner.cli import main
sys.argv = ["runner.train"] + sys.argv[1:]
main()
"""


def test_kill_during_snapshot_write(tmp_path, data_root):
    run_dir = tmp_path / "killed"
    r = run_cli("-c", KILL_IN_WRITE, f"data.root={data_root}", "trainer.epochs=6", "trainer.progress=false",
                "device=cpu", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 137
    info = json.loads((run_dir / "run.json").read_text())  # still valid JSON
    assert info["status"] == "running" and info["epochs_completed"] == 2
    assert any(f.name.startswith(".epoch-0003") for f in (run_dir / "params").iterdir())  # the half file, hidden
    assert sorted(snapshot.read_params(run_dir).epoch.unique()) == [0, 1, 2]
    assert sorted(pd.read_parquet(run_dir / "params").epoch.unique()) == [0, 1, 2]  # pandas skips it too
    from runner.report import load_runs
    assert load_runs([run_dir])[0].status == "incomplete"


def test_sixteen_parallel_jobs(tmp_path, data_root):
    r = run_cli("-m", "runner.train", "-m", "hydra/launcher=joblib", "seed=range(16)", f"data.root={data_root}",
                "data.limit=120", "trainer.epochs=1", "trainer.progress=false", "device=cpu",
                "snapshot.tensors=false", f"hydra.sweep.dir={tmp_path / 'par'}", cwd=tmp_path, timeout=280)
    assert r.returncode == 0, r.stderr
    runs = job_runs(tmp_path / "par")
    assert sorted(j["_dir"] for j in runs) == sorted(f"seed={i}" for i in range(16))
    assert [j["status"] for j in runs] == ["completed"] * 16
    assert all(j["threads"] == 1 for j in runs)  # 2 workers x 1 thread on 2 cores: no oversubscription
    sweep = json.loads((tmp_path / "par" / "sweep.json").read_text())
    assert sweep["counts"] == {"completed": 16}
    assert len({j["final"]["train_loss"] for j in runs}) == 16  # each job seeded by its own seed


KEYS = ["optim.lr", "model.dropout", "model.hidden", "model.channels", "trainer.epochs", "data.batch_size", "data.limit",
        "snapshot.every", "model.activation", "sharing", "init", "optim", "model", "seed", "init.std",
        "trainer.diverge_factor", "optim.momentum", "sharing.groups", "device", "+extra", "model.hiddenx"]
ALPHABET = string.ascii_letters + string.digits + " .,-_[]{}:'\"=$+/@*"
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(ALPHABET, max_size=12),
    st.lists(st.integers(-3, 300), max_size=4).map(lambda v: "[" + ",".join(map(str, v)) + "]"),
    st.sampled_from(["null", "true", "none", "all_hidden", "groups", "adam", "rgnet", "nest_mlp", "xavier",
                     "per_layer", "[[net.4,net.7]]", "[[net.1]]", "cuda", "cpu", "1e-3", "0.999", "nan", "cnn", "lenet",
                     "custom", "[[conv2,conv3]]", "[[conv2.weight,conv3.weight]]", "[[net.4.weight,net.7]]",
                     "cuda:1", "[16,16]"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_fuzz_overrides_clean_error_or_valid(data_root, capsys, pairs):
    """No input crashes the checks: each is a valid config (quiet, or notes only) or one clean line
    with exit 2 (a bug would be exit 1)."""
    args = [f"data.root={data_root}"] + [f"{k}={v}" for k, v in pairs]
    try:
        guard("train", args)
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert err.startswith("paramlab: error: ") and err.count("\n") == 1 and "Traceback" not in err
    else:        # a valid config: nothing on stderr but notes on settings that do nothing (cli.unused_settings)
        err = capsys.readouterr().err
        assert all(line.startswith("paramlab: note: ") for line in err.splitlines()), err


def _start(args, tmp_path, ready, timeout=90):
    """A real command in the background, returned once `ready()` holds."""
    import subprocess
    import sys
    import time
    from conftest import ROOT
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "runner.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None and time.time() < deadline, "the first command did not get going"
        time.sleep(0.02)
    return proc


def test_two_real_commands_on_one_directory(tmp_path, data_root):
    """A second command on a run or sweep directory a live command is writing stops with one line
    naming the first one's pid and the lock file; once the first is gone, the directory is free."""
    common = [f"data.root={data_root}", "trainer.epochs=400", "trainer.progress=false", "device=cpu",
              "snapshot.enabled=false"]
    run_dir, sweep = tmp_path / "run", tmp_path / "sweep"
    for args, target, ready in (
            ([f"hydra.run.dir={run_dir}"], run_dir, lambda: (run_dir / "metrics" / "epoch-0002.parquet").exists()),
            (["-m", "seed=1,2", f"hydra.sweep.dir={sweep}"], sweep, lambda: (sweep / "sweep.json").exists())):
        first = _start(args + common, tmp_path, ready)
        try:
            r = run_cli("-m", "runner.train", *args, *common, cwd=tmp_path)
            assert r.returncode == 2, r.stderr
            assert r.stderr.count("\n") == 1 and f"(pid {first.pid})" in r.stderr
            assert str(target / ".paramlab.lock") in r.stderr
        finally:
            first.kill()
            first.wait()
    from runner.lock import DirLock
    DirLock(sweep).acquire().release()  # a killed command's lock does not block (the kernel dropped it)
    (sweep / ".paramlab.lock").write_text("999999")  # a stale pid in the file (a restarted container)
    DirLock(sweep).acquire().release()


def test_a_bug_is_not_a_user_error(data_root, capsys, monkeypatch):
    """An exception that is not the user's mistake: exit 1, one line naming a file that holds
    the full traceback (not 'paramlab: error: <your mistake>' with exit 2)."""
    import runner.config

    def broken(cfg):
        return 1 / 0

    monkeypatch.setattr(runner.config, "validate", broken)
    with pytest.raises(SystemExit) as e:
        guard("train", [f"data.root={data_root}"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert "internal error (ZeroDivisionError: division by zero); this is a bug in paramlab" in err
    log = err.rsplit("traceback in ", 1)[1].strip()
    text = open(log).read()
    assert "Traceback" in text and "def broken" not in text and "1 / 0" in text
    os.unlink(log)


def test_a_bug_during_a_run_exits_1_with_error_log(tmp_path, data_root):
    code = ("import sys, runner.engine as e\n"
            "real = e.evaluate\n"
            "def broken(*a, **k):\n    raise RuntimeError('boom')\n"
            "e.evaluate = broken\n"
            "from runner.cli import main\nsys.argv = ['train'] + sys.argv[1:]\nmain()\n")
    r = run_cli("-c", code, f"data.root={data_root}", "trainer.epochs=2", "trainer.progress=false", "device=cpu",
                f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert f"traceback in {tmp_path / 'r' / 'error.log'}" in r.stderr
    assert "RuntimeError: boom" in (tmp_path / "r" / "error.log").read_text()
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "RuntimeError: boom"
    # Continued without the bug: completed, and the earlier traceback kept under its time, not as error.log.
    r = run_cli("-m", "runner.train", f"data.root={data_root}", "trainer.epochs=2", "trainer.progress=false",
                "device=cpu", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "completed"
    kept = list((tmp_path / "r").glob("error.*.log"))
    assert not (tmp_path / "r" / "error.log").exists() and len(kept) == 1
    assert "RuntimeError: boom" in kept[0].read_text()


CTRL_C = {
    # Ctrl-C in a terminal: SIGINT to the command's process group (both ensembles' processes).
    "sweep, Ctrl-C": (["-m", "sharing=none,all_hidden", "optim.lr=0.05,0.1", "hydra.launcher.n_jobs=2"], True, 4),
    # SIGINT to the command's process alone (`kill -INT PID`, a scheduler): passed on to its workers.
    "sweep, SIGINT to the command": (["-m", "sharing=none,all_hidden", "optim.lr=0.05,0.1",
                                      "hydra.launcher.n_jobs=2"], False, 4),
    "single run, Ctrl-C": ([], True, 1),
}


@pytest.mark.parametrize("case", CTRL_C)
def test_ctrl_c_ends_the_command_with_one_line(case, tmp_path, data_root):
    """The command ends at once with one line and exit 130 (no traceback, no worker left), and its
    runs are recorded as not finished, so the same command continues them."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    args, group, n_runs = CTRL_C[case]
    where = f"hydra.sweep.dir={tmp_path / 's'}" if args else f"hydra.run.dir={tmp_path / 's'}"
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.Popen([sys.executable, "-m", "runner.train", *args, f"data.root={data_root}", "trainer.epochs=2000",
                          "trainer.progress=false", "device=cpu", "snapshot.enabled=false", where],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started, lines = (2 if args else 1), []
    for line in p.stdout:                       # every ensemble (or the run) started
        lines.append(line)
        if sum(("ensemble of 2" if args else "paramlab: start") in x for x in lines) == started:
            break
    time.sleep(1.5)
    (os.killpg if group else os.kill)(p.pid, signal.SIGINT)
    t = time.perf_counter()
    out = "".join(lines) + p.communicate(timeout=60)[0]
    assert time.perf_counter() - t < 20
    assert p.returncode == 130, out
    assert "paramlab: interrupted" in out and "Traceback" not in out, out
    runs = job_runs(tmp_path / "s") if args else [json.loads((tmp_path / "s" / "run.json").read_text())]
    assert len(runs) == n_runs and {j["status"] for j in runs} == {"failed"}
    assert all(j["epochs_completed"] < 2000 for j in runs)
    for _ in range(100):                     # no process of the command lives on (workers end, zombies reaped)
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a process of the interrupted command is still there after 10 s")
