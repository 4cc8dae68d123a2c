"""Per-epoch snapshots: epoch 0, grads as epoch means, per-call-site grads, statistics,
full tensors, activations, plain Parquet, crash safety and write faults."""
import errno
import json
import signal
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from runner import snapshot
from runner.engine import build, run, train

from conftest import ROOT


def test_epoch0_values_only_and_every(make_cfg, tmp_path):
    run(make_cfg("sharing=all_hidden", "trainer.epochs=5", "snapshot.every=2"), tmp_path / "r")
    p = snapshot.read_params(tmp_path / "r")
    assert sorted(p.epoch.unique()) == [0, 2, 4, 5]  # every 2nd epoch, and always the last
    e0 = p[p.epoch == 0]
    assert set(e0.kind) == {"value"} and e0.site.isna().all()
    assert list(e0.name) == ["net.1.weight", "net.1.bias", "net.4.weight", "net.4.bias",
                             "net.10.weight", "net.10.bias"]  # canonical names, stored once
    e2 = p[p.epoch == 2]
    assert (e2.kind == "grad").sum() == 6
    sites = e2[e2.kind == "grad_site"]
    assert sorted(sites[sites.name == "net.4.weight"].site) == ["net.4", "net.7"]
    assert list(sites[sites.name == "net.1.weight"].site) == ["net.1"]
    assert sorted(pd.read_parquet(tmp_path / "r" / "activations").epoch.unique()) == [0, 2, 4, 5]


def test_grad_is_epoch_mean_and_sites_match_untied_twin(make_cfg, tmp_path):
    """One full-batch step per epoch: the stored grad and per-site grads at epoch 1 must equal
    an independent computation on an untied twin built from the epoch-0 tensors."""
    cfg = make_cfg("sharing=all_hidden", "trainer.epochs=1", "data.batch_size=600")
    run(cfg, tmp_path / "r")
    init = {t["name"]: torch.from_numpy(t["array"]) for t in snapshot.read_tensors(tmp_path / "r", epoch=0)}
    twin, _ = build(make_cfg("sharing=none"))
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(init[name.replace("net.7.", "net.4.")])
    from runner.data import load
    ds = load(cfg.data.root, None)
    torch.nn.functional.cross_entropy(twin(ds.train_x), ds.train_y).backward()
    stored = {(t["name"], t["kind"], t["site"]): t["array"] for t in snapshot.read_tensors(tmp_path / "r", epoch=1)}
    for leaf in ("weight", "bias"):
        g4, g7 = (twin.net[i].get_parameter(leaf).grad.numpy() for i in (4, 7))
        np.testing.assert_allclose(stored[(f"net.4.{leaf}", "grad_site", "net.4")], g4, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(stored[(f"net.4.{leaf}", "grad_site", "net.7")], g7, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(stored[(f"net.4.{leaf}", "grad", None)], g4 + g7, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(stored[("net.1.weight", "grad", None)], twin.net[1].weight.grad.numpy(),
                               rtol=1e-4, atol=1e-7)


def test_sites_sum_to_grad_every_epoch_and_last_values_exact(make_cfg, tmp_path):
    info, model = train(make_cfg("sharing=all_hidden", "trainer.epochs=3", "model.dropout=0.2"), tmp_path / "r")
    tensors = snapshot.read_tensors(tmp_path / "r")
    for epoch in (1, 2, 3):
        rows = [t for t in tensors if t["epoch"] == epoch]
        for name in ("net.4.weight", "net.4.bias"):
            grad = next(t["array"] for t in rows if t["name"] == name and t["kind"] == "grad")
            sites = [t["array"] for t in rows if t["name"] == name and t["kind"] == "grad_site"]
            assert len(sites) == 2
            np.testing.assert_allclose(sites[0] + sites[1], grad, rtol=1e-5, atol=1e-8)
    last = {t["name"]: t["array"] for t in tensors if t["epoch"] == 3 and t["kind"] == "value"}
    for name, p in model.named_parameters():
        assert np.array_equal(last[name], p.detach().numpy()), name
        assert last[name].shape == tuple(p.shape)


def test_row_statistics_match_numpy(make_cfg, tmp_path):
    run(make_cfg("trainer.epochs=1", "model.hidden=[16,16]"), tmp_path / "r")
    p = snapshot.read_params(tmp_path / "r")
    tensors = snapshot.read_tensors(tmp_path / "r")
    for t in tensors:
        row = p[(p.epoch == t["epoch"]) & (p.name == t["name"]) & (p.kind == t["kind"])].iloc[0]
        a = t["array"].astype(np.float64).ravel()
        assert row.numel == a.size and list(row["shape"]) == list(t["array"].shape)
        np.testing.assert_allclose([row["mean"], row["std"], row["norm"], row["min"], row["max"]],
                                   [a.mean(), a.std(), np.sqrt((a * a).sum()), a.min(), a.max()], rtol=1e-5, atol=1e-9)
        assert row.frac_zero == (a == 0).mean() and row.n_nonfinite == 0
        counts = np.asarray(row.hist_counts)
        assert len(counts) == 64 and counts.sum() == a.size
        expect, _ = np.histogram(a, bins=np.asarray(row.hist_edges))
        assert np.abs(expect - counts).sum() <= 2  # bin-edge rounding only
        # every element is in the quantile sample here (numel <= 4096): exact, linear interpolation
        sample = a if a.size <= 4096 else a[(np.arange(4096) * a.size) // 4096]
        np.testing.assert_allclose([row.q01, row.q25, row.q50, row.q75, row.q99],
                                   np.quantile(sample, [0.01, 0.25, 0.5, 0.75, 0.99]), rtol=1e-6, atol=1e-9)


def test_nonfinite_counted_not_crash():
    from runner.stats import stacked_stats
    t = torch.tensor([[1.0, float("nan"), float("inf"), 3.0], [2.0, 2.0, 2.0, 2.0]])   # 2 members
    s = stacked_stats([t, torch.zeros(2, 3)], bins=4)
    assert s["n_nonfinite"].tolist() == [[2, 0], [0, 0]]
    assert s["mean"][0, 0] == 2.0 and s["min"][0, 0] == 1.0 and s["max"][0, 0] == 3.0
    assert s["mean"][1, 0] == 2.0 and s["std"][1, 0] == 0.0 and s["hist_counts"][1, 0].sum() == 4
    assert s["frac_zero"][0, 1] == 1.0 and s["hist_counts"][0, 1].sum() == 3


@pytest.mark.parametrize("m", [1, 2, 7, 64, 80, 4096])
def test_quantiles_are_torch_quantile_bit_for_bit(m):
    from runner.snapshot import QUANTILES
    from runner.stats import _quantiles
    g = torch.Generator().manual_seed(m)
    for x in (torch.randn(3, 4, m, dtype=torch.float64, generator=g),
              torch.randint(-3, 4, (3, 4, m), generator=g).double()):            # ties
        expect = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64), dim=2)
        assert torch.equal(_quantiles(x), expect)


def test_quantiles_of_signed_zeros_do_not_depend_on_the_other_members():
    """A member's quantiles are the same whether every member's values are finite (the clean path)
    or another member's are not (the masked path), signed zeros included."""
    from runner.stats import stacked_stats
    row = torch.tensor([1.0, -0.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -0.0, 1.0, -0.0, -0.0, -0.0, 0.0, 0.0, 1.0, -0.0,
                        -0.0, 0.0, -1.0, -0.0, 0.0, 1.0, 1.0, -1.0, -0.0, 0.0, 0.0, -1.0, 0.0, 0.0, -1.0, 1.0, -1.0])
    clean = torch.stack([row, row])
    masked = clean.clone()
    masked[1, 0] = float("nan")
    a, b = stacked_stats([clean]), stacked_stats([masked])
    for column in ("q01", "q25", "q50", "q75", "q99"):
        assert np.array_equal(np.signbit(a[column][0]), np.signbit(b[column][0])) and a[column][0] == b[column][0]


def test_activation_stats_seed_formula(make_cfg, tmp_path):
    info, model = train(make_cfg("trainer.epochs=1"), tmp_path / "r")
    acts = snapshot.read_activations(tmp_path / "r")
    last = acts[acts.epoch == 1].set_index("layer")
    from runner.data import load
    x = load(make_cfg().data.root, None).test_x[:512]
    model.eval()
    with torch.no_grad():
        a = model.net[:3](x)  # output of the first hidden layer's activation (net.2)
    var = ((a - a.mean(0, keepdim=True)) ** 2).mean().item()
    assert last.loc["net.2", "var"] == pytest.approx(var, rel=1e-5)
    assert last.loc["net.2", "frac_dead"] == pytest.approx((a == 0).all(0).float().mean().item())
    assert list(last.index) == ["net.2", "net.5", "net.8"]


def test_plain_parquet_read_by_duckdb_and_pandas(make_cfg, tmp_path):
    import duckdb
    run(make_cfg("sharing=all_hidden", "trainer.epochs=2"), tmp_path / "r")
    for table in ("metrics", "params", "tensors", "activations"):
        folder = tmp_path / "r" / table
        n_pandas = len(pd.read_parquet(folder))
        n_duck = duckdb.sql(f"select count(*) from read_parquet('{folder}/*.parquet')").fetchall()[0][0]
        assert n_pandas == n_duck > 0
    site = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/r/params/*.parquet') "
                      "where kind = 'grad_site' and name = 'net.4.weight'").fetchall()[0][0]
    assert site == 4  # 2 sites x 2 epochs


def test_compact_copy_holds_exactly_the_epoch_files(make_cfg, tmp_path):
    """compact/ is written from the tables the run wrote in this process (not read back): its
    rows must still be the epoch files' rows, in epoch order, for each table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run(make_cfg("sharing=all_hidden", "trainer.epochs=3"), tmp_path / "r")
    for table in snapshot.COMPACT_TABLES:
        files = snapshot.epoch_files(tmp_path / "r", table)
        assert len(files) == (4 if table != "metrics" else 3)
        expected = pa.concat_tables([pq.read_table(f, schema=snapshot.SCHEMAS[table]) for f in files])
        assert pq.read_table(snapshot.compact_file(tmp_path / "r", table)).equals(expected), table
    assert not any(str(tmp_path) in key for key in snapshot._WRITTEN)   # nothing kept after the run


def test_tensors_off(make_cfg, tmp_path):
    run(make_cfg("snapshot.tensors=false", "trainer.epochs=1"), tmp_path / "r")
    assert not (tmp_path / "r" / "tensors").exists() or not list((tmp_path / "r" / "tensors").iterdir())
    assert len(snapshot.read_params(tmp_path / "r")) > 0


def test_disk_full_fails_cleanly_and_keeps_earlier_epochs(make_cfg, tmp_path, monkeypatch):
    real = snapshot.prepare_table

    def flaky(run_dir, table, epoch, columns):
        write = real(run_dir, table, epoch, columns)
        if epoch == 2 and table == "params":
            def full():   # the disk fills as the file is written
                raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))
            return full
        return write

    monkeypatch.setattr(snapshot, "prepare_table", flaky)
    with pytest.raises(OSError):
        run(make_cfg("trainer.epochs=3"), tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "failed" and info["epochs_completed"] == 1
    assert info["error"].startswith("OSError: No space left on device")
    assert sorted(snapshot.read_params(tmp_path / "r").epoch.unique()) == [0, 1]
    assert not [f for f in (tmp_path / "r" / "params").iterdir() if f.name.startswith(".")]


def test_an_epochs_files_are_durable_together(make_cfg, tmp_path, monkeypatch):
    """Each epoch's files: written to temp names, one sync of the file system, renamed in order
    but run.json, a second sync, then run.json: it never names an epoch whose files could still
    be lost (snapshot.durable_together). A failure inside the block leaves no file, whole or half."""
    import os
    if snapshot._syncfs_fd(tmp_path) is None:
        pytest.skip("no syncfs relied on here")
    events = []
    sync, replace = snapshot._sync_filesystem, os.replace
    monkeypatch.setattr(snapshot, "_sync_filesystem", lambda fd, folder: (events.append("sync"), sync(fd, folder))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(os.path.relpath(b, tmp_path / "r")), replace(a, b)))
    run(make_cfg("trainer.epochs=2", "snapshot.tensors=true"), tmp_path / "r")
    for epoch in (1, 2):
        name = f"epoch-{epoch:04d}.parquet"
        start = events.index(f"params/{name}") - 1
        assert events[start:start + 8] == ["sync", f"params/{name}", f"tensors/{name}", f"activations/{name}",
                                           f"metrics/{name}", "checkpoint.pt", "sync", "run.json"]
    assert events.count("sync") == 4

    folder = tmp_path / "group"
    folder.mkdir()
    metrics = {"epoch": [1], "split": ["train"], "metric": ["loss"], "value": [0.5]}
    with pytest.raises(RuntimeError):
        with snapshot.durable_together(folder):
            snapshot.write_bytes(folder / "a", b"1")
            snapshot.prepare_table(folder, "metrics", 1, metrics)()
            raise RuntimeError("a failure before the block's end")
    assert list(folder.iterdir()) == [folder / "metrics"] and list((folder / "metrics").iterdir()) == []
    assert snapshot._take(str(snapshot.epoch_file(folder, "metrics", 1))) is None   # not kept for compaction
    with snapshot.durable_together(folder):
        snapshot.write_bytes(folder / "a", b"1")
        assert not (folder / "a").exists() and (folder / f".a.tmp-{os.getpid()}").exists()   # not visible yet
    assert (folder / "a").read_bytes() == b"1" and len(list(folder.iterdir())) == 2

    # Where syncfs is not relied on (another file system, an old kernel), each file as outside the block.
    monkeypatch.setattr(snapshot, "_fs_type", lambda folder: "fuse")
    with snapshot.durable_together(folder):
        snapshot.write_bytes(folder / "c", b"3")
        assert (folder / "c").read_bytes() == b"3"


def test_sigkill_mid_run_leaves_whole_files(data_root, tmp_path):
    import subprocess
    import sys
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "runner.train", f"data.root={data_root}", "trainer.epochs=400",
                             "trainer.progress=false", "device=cpu", f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not (run_dir / "metrics" / "epoch-0004.parquet").exists():
            assert proc.poll() is None and time.time() < deadline, "training did not get going"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "running"
    for table in ("metrics", "params", "tensors", "activations"):
        files = list((run_dir / table).iterdir())
        visible = [f for f in files if not f.name.startswith(".")]
        assert all(f.name.startswith("epoch-") and f.suffix == ".parquet" for f in visible)
        pd.read_parquet(run_dir / table)  # every visible file is whole
    n_metrics = len(list((run_dir / "metrics").glob("epoch-*.parquet")))
    assert info["epochs_completed"] <= n_metrics <= info["epochs_completed"] + 1
    assert info["epochs_completed"] >= 3


def test_epoch_means_and_diagnostics_against_an_independent_oracle(make_cfg, tmp_path):
    """Several steps per epoch, a tiny learning rate (the weights barely move): the stored epoch
    grad, per-site grads, step_var and cos_grad equal those recomputed from the untied twin at the
    init weights, batch by batch in the run's own order; `update` rows equal value differences."""
    from runner.data import load
    cfg = make_cfg("sharing=all_hidden", "trainer.epochs=1", "optim.lr=1e-9", "data.batch_size=100")
    run(cfg, tmp_path / "r")
    init = {t["name"]: torch.from_numpy(t["array"]).double() for t in snapshot.read_tensors(tmp_path / "r", epoch=0)}
    twin, _ = build(make_cfg("sharing=none"))
    twin.double()
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(init[name.replace("net.7.", "net.4.")])
    ds = load(cfg.data.root, None)
    perm = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(cfg.seed))  # the run's batch order
    per_step = []
    for i in range(0, ds.n_train, 100):
        idx = perm[i:i + 100]
        twin.zero_grad()
        torch.nn.functional.cross_entropy(twin(ds.train_x[idx].double()), ds.train_y[idx]).backward()
        per_step.append({n: p.grad.clone() for n, p in twin.named_parameters()})
    assert len(per_step) == 6
    mean = {n: sum(s[n] for s in per_step) / 6 for n in per_step[0]}
    stored = {(t["name"], t["kind"], t["site"]): t["array"] for t in snapshot.read_tensors(tmp_path / "r", epoch=1)}
    close = dict(rtol=2e-4, atol=1e-7)
    tied = lambda n: mean[n] + mean[n.replace("net.4.", "net.7.")]  # noqa: E731
    for leaf in ("weight", "bias"):
        np.testing.assert_allclose(stored[(f"net.4.{leaf}", "grad_site", "net.4")], mean[f"net.4.{leaf}"], **close)
        np.testing.assert_allclose(stored[(f"net.4.{leaf}", "grad_site", "net.7")], mean[f"net.7.{leaf}"], **close)
        np.testing.assert_allclose(stored[(f"net.4.{leaf}", "grad", None)], tied(f"net.4.{leaf}"), **close)
    np.testing.assert_allclose(stored[("net.1.weight", "grad", None)], mean["net.1.weight"], **close)
    p = snapshot.read_params(tmp_path / "r").set_index(["epoch", "name", "kind", "site"], drop=False)
    for name in ("net.1.weight", "net.4.weight", "net.10.bias"):
        total = [s[name] + (s[name.replace("net.4.", "net.7.")] if "net.4." in name else 0) for s in per_step]
        g = tied(name) if "net.4." in name else mean[name]
        oracle = float(sum(((t - g) ** 2).sum() for t in total) / 6)
        assert p.loc[(1, name, "grad", None), "step_var"].item() == pytest.approx(oracle, rel=2e-3)
    s7, g = mean["net.7.weight"], tied("net.4.weight")
    cos = float((s7 * g).sum() / (s7.norm() * g.norm()))
    assert p.loc[(1, "net.4.weight", "grad_site", "net.7"), "cos_grad"].item() == pytest.approx(cos, rel=1e-4)
    assert p.loc[(1, "net.1.weight", "grad_site", "net.1"), "cos_grad"].item() == 1.0
    values = {(t["epoch"], t["name"]): t["array"].astype(np.float64) for t in snapshot.read_tensors(tmp_path / "r")
              if t["kind"] == "value"}
    update = p.loc[(1, "net.1.weight", "update", None)]
    diff = values[(1, "net.1.weight")] - values[(0, "net.1.weight")]
    assert update["norm"].item() == pytest.approx(np.sqrt((diff ** 2).sum()), rel=1e-3, abs=1e-12)


_I32, _I64, _F32, _F64, _S = "int32", "int64", "float32", "float64", "string"
COLUMN_CASES = [     # (values, Arrow type): what the writers pass, and what they must not get wrong
    ([1, None, 3], _I64), ([0.5, None, float("nan"), -0.0, float("inf")], _F64), ([], _F64), ([7] * 5, _I32),
    (["net.1.weight", None, "", "é"], _S), ([None, None], _S), ([None, None], _F64), ([], _S),
    ([(8, 784), (), (10,)], "list_int64"), ([np.arange(3.0), np.zeros(0)], "list_float64"), ([[], []], "list_int64"),
    (np.arange(12).reshape(3, 4), "list_int64"), (np.linspace(0, 1, 10).reshape(2, 5), "list_float64"),
    (np.asfortranarray(np.arange(12.0).reshape(3, 4)), "list_float64"),
    (np.arange(12.0).reshape(3, 4)[:, ::2], "list_float64"),
    (np.zeros((3, 0)), "list_float64"), (np.zeros((0, 5)), "list_float64"),
    (np.array([1.5, 2.5]), _F64), (np.array([3, 4], dtype=np.int32), _I64), (np.arange(10.0)[::3], _F64),
    ([np.float32(0.1), np.float64(0.2), None], _F64), ([np.int64(3), np.int32(4), None], _I32),
    # refused or converted by pa.array: column() must do the same, never pass them through changed
    ([1.5, 2], _I64), ([float("nan")], _I64), (np.array([1.5, 2.0]), _I64), ([2 ** 31], _I32),
    (np.array([2 ** 31], dtype=np.int64), _I32), ([2 ** 63], _I64), (np.array([2 ** 63], dtype=np.uint64), _I64),
    ([0.1, 1e40], _F32), (np.array([1e40]), _F32), ([True, False], _I64), (np.array([True, False]), _I64),
    ([1, 2 ** 53 + 1], _F64), (["1"], _I64), ([1, 2], _S), ([b"ab"], _S), ([[1, 2], None], "list_int64"),
    ([[1, None]], "list_int64"), ([[1.5]], "list_int64"), ([np.arange(4).reshape(2, 2)], "list_int64"),
    (np.array([[1.5, 2.5]]), "list_int64"), (np.zeros((2, 2, 2)), "list_float64"), (np.arange(3.0), "list_float64"),
    (np.array([1.0, 2.0], dtype=">f8"), _F64), (np.ma.array([1.0, 2.0], mask=[0, 1]), _F64),
    (np.array([1.0, None], dtype=object), _F64), ([[1.0]], _F64), ([True, 0.5], _F64), ([(1, True)], "list_int64"),
    ([np.bool_(True)], _I64)]


@pytest.mark.parametrize("values, type_", COLUMN_CASES)
def test_columns_from_buffers_equal_pyarrows_conversion(values, type_):
    """snapshot.column gives what pa.array gives (values, nulls, type), or fails where it fails:
    fails on a wrong offset, a lost null, a silent cast (a float into an int column, an int32
    overflow, a bool as an int, a 2-d row cut to its first dimension)."""
    import pyarrow as pa

    pa_type = {"int64": pa.int64(), "int32": pa.int32(), "float32": pa.float32(), "float64": pa.float64(),
               "string": pa.string(), "list_int64": pa.list_(pa.int64()), "list_float64": pa.list_(pa.float64())}[type_]

    def outcome(convert):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                array = convert()
        except Exception as e:  # noqa: BLE001
            return "refused", type(e).__name__
        array.validate(full=True)
        return array.type, array.null_count, repr(array.to_pylist())     # (repr: NaN and -0.0 compared too)

    rows = list(values) if isinstance(values, np.ndarray) and values.ndim == 2 and type_.startswith("list") else values
    expected = outcome(lambda: pa.array(rows, type=pa_type))
    got = outcome(lambda: snapshot.column(values, pa_type))
    assert got == expected or (got[0] == expected[0] == "refused")


def test_training_never_imports_pandas(data_root, tmp_path):
    """pyarrow imports pandas (0.15-0.3 s of CPU) the first time it converts Python or numpy values;
    a grid's processes would pay it while their cores are busy starting up. Every table a run writes
    (all four, with diagnostics, tied call sites, compaction) is built from buffers: fails when any
    of them goes through pyarrow's conversion again."""
    code = f"""
import sys
from hydra import compose, initialize_config_dir
from runner.config import register_configs
from runner.paths import register_resolvers
from runner.engine import run
register_resolvers(); register_configs()
with initialize_config_dir(config_dir={str(ROOT / 'conf')!r}, version_base="1.3"):
    cfg = compose(config_name="config", overrides=["data.root={data_root}", "trainer.progress=false",
        "device=cpu", "trainer.epochs=2", "data.batch_size=64", "sharing=all_hidden", "snapshot.diagnostics=true"])
info = run(cfg, {str(tmp_path / 'run')!r})
print(info["status"], "pandas" in sys.modules)
"""
    from conftest import run_cli

    out = run_cli("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["completed", "False"], out.stdout
    assert (tmp_path / "run" / "compact" / "params.parquet").is_file()
    assert len(snapshot.read_params(tmp_path / "run").query("kind == 'update'")) > 0
