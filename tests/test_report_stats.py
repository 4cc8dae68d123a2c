"""The report's statistics, loading and diagnostics on run trees written directly with the real
writers (`snapshot.write_table` / `write_json` / `compact_run`) and synthetic numbers, so every
expected value is known here and computed independently (numpy, the `statistics` module, a
printed t table)."""
import importlib
import json
import math
import statistics

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner import snapshot
from runner.report import build_report
from runner.report.stats import t_quantile

load = importlib.import_module("runner.report.load")
stats = importlib.import_module("runner.report.stats")
keys = importlib.import_module("runner.report.keys")
diagnostics = importlib.import_module("runner.report.figures.diagnostics")

# Student t, 0.975 quantile, as printed in tables (3 decimals).
T975 = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045, math.inf: 1.960}
PNG = b"\x89PNG\r\n\x1a\n"
PARAMS = [("net.1.weight", [4, 6]), ("net.1.bias", [4]), ("net.3.weight", [4, 4]), ("net.3.bias", [4])]


def config(**over):
    c = {"model": {"name": "mlp", "hidden": [4, 4], "dropout": 0.0}, "sharing": {"name": "none", "groups": []},
         "init": {"name": "default", "rules": []}, "optim": {"name": "sgd", "lr": 0.1},
         "data": {"root": "/somewhere", "batch_size": 64}, "seed": 0}
    for dotted, v in over.items():
        node = c
        *path, leaf = dotted.split(".")
        for k in path:
            node = node[k]
        node[leaf] = v
    return c


def params_columns(epoch, rng, diagnostics_on=True, tied=False, norm_of=None):
    """One epoch of params rows: value (+ grad, grad_site, update from epoch 1)."""
    rows = []
    for name, shape in PARAMS:
        rows.append((name, "value", None))
        if epoch:
            rows += [(name, "grad", None), (name, "update", None)]
            sites = ["net.1", "net.3"] if tied and name.startswith("net.3") else [name.rsplit(".", 1)[0]]
            rows += [(name, "grad_site", s) for s in sites]
    k = len(rows)
    norm = np.array([norm_of(epoch, r) if norm_of else 1 + rng.random() for r in rows])
    cols = {"epoch": [epoch] * k, "name": [r[0] for r in rows], "kind": [r[1] for r in rows],
            "site": [r[2] for r in rows], "shape": [dict(PARAMS)[r[0]] for r in rows],
            "numel": [int(np.prod(dict(PARAMS)[r[0]])) for r in rows], "norm": norm,
            "mean": rng.normal(size=k), "std": rng.random(k), "min": -norm, "max": norm,
            "frac_zero": np.zeros(k), "n_nonfinite": np.zeros(k, dtype=np.int64),
            "hist_counts": [list(rng.integers(0, 9, 8)) for _ in rows],
            "hist_edges": [list(np.linspace(-1, 1, 9)) for _ in rows]}
    for c in snapshot.QUANTILE_COLUMNS:
        cols[c] = rng.normal(size=k)
    # Diagnostics as the engine will write them (null until then: diagnostics_on=False).
    # cos_grad: 1 for an untied tensor's one site; the two sites of a tied one disagree more and more.
    cos = {"net.1": 0.9 - 0.1 * epoch, "net.3": 0.6 - 0.2 * epoch}
    cols["cos_grad"] = [(cos[r[2]] if tied and r[0].startswith("net.3") else 1.0)
                        if r[1] == "grad_site" and diagnostics_on else None for r in rows]
    cols["step_var"] = [2.0 * n ** 2 if r[1] == "grad" and diagnostics_on else None for r, n in zip(rows, norm)]
    return cols


def write_run(root, name, cfg, status="completed", epochs=3, final=None, seed=0, compact=True,
              diagnostics_on=True, tied=False, diverged=None, norm_of=None, acc_curve=None):
    """A run directory as the engine leaves it; `epochs` whole epochs of tables."""
    d = root / name
    rng = np.random.default_rng(seed)
    for e in range(epochs + 1):
        snapshot.write_table(d, "params", e, params_columns(e, rng, diagnostics_on, tied, norm_of))
        snapshot.write_table(d, "activations", e, {
            "epoch": [e] * 2, "layer": ["net.2", "net.4"], "units": [4, 4], "examples": [32, 32],
            "mean": rng.random(2), "var": rng.random(2), "frac_dead": [0.0, 0.25], "frac_zero": [0.1, 0.3]})
        if e:
            acc = acc_curve(e) if acc_curve else 0.5 + 0.1 * e
            snapshot.write_table(d, "metrics", e, {
                "epoch": [e] * 4, "split": ["train", "train", "val", "val"], "metric": ["loss", "acc", "loss", "acc"],
                "value": [1.0 / e, acc, 1.1 / e, acc]})
    snapshot.write_json(d / "run.json", {
        "run_id": name, "status": status, "config": cfg, "epochs": 3, "epochs_completed": epochs,
        "params": {"unique": 60 if tied else 80, "total": 80},
        "tie_groups": [{"canonical": f"net.3.{p}", "aliases": [f"net.3.{p}", f"net.5.{p}"],
                        "call_sites": ["net.1", "net.3"]} for p in ("weight", "bias")] if tied else [],
        "final": final, "wall_time_s": 1.0, "diverged": diverged,
        "error": None if status != "failed" else "OSError: disk full"})
    if compact and status in ("completed", "diverged", "failed"):
        snapshot.compact_run(d)
    return d


def final(val_acc, val_loss=None, train_loss=None):
    return {"val_acc": val_acc, "val_loss": 1 - val_acc if val_loss is None else val_loss,
            "train_loss": 0.9 - val_acc if train_loss is None else train_loss, "train_acc": val_acc}


# ----------------------------------------------------------------------------- t quantiles

def test_t_quantile_matches_the_printed_table():
    for df, expected in T975.items():
        assert round(t_quantile(0.975, df), 3) == pytest.approx(expected, abs=1e-9), df
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.995, 1) == pytest.approx(63.657, abs=1e-3)
    assert t_quantile(0.9, 3) == pytest.approx(1.638, abs=1e-3)
    assert math.isnan(t_quantile(0.975, 0))


# ----------------------------------------------------------------------------- groups

@pytest.fixture(scope="module")
def seeds_tree(tmp_path_factory):
    """lr 0.1: five completed seeds plus a diverged, a failed and a killed run (absurd finals, so
    letting them into a mean shows); lr 0.5: one completed run."""
    root = tmp_path_factory.mktemp("seeds")
    accs = [0.81, 0.79, 0.84, 0.80, 0.83]
    for s, a in enumerate(accs):
        write_run(root, f"lr0.1_s{s}", config(**{"optim.lr": 0.1, "seed": s}), final=final(a), seed=s)
    write_run(root, "lr0.1_div", config(**{"optim.lr": 0.1, "seed": 5}), status="diverged", epochs=1,
              final=final(99.0), diverged={"epoch": 2, "detail": "epoch 2 step 7: loss nan"})
    write_run(root, "lr0.1_fail", config(**{"optim.lr": 0.1, "seed": 6}), status="failed", epochs=0, final=final(99.0))
    write_run(root, "lr0.1_killed", config(**{"optim.lr": 0.1, "seed": 7}), status="running", epochs=2,
              final=final(99.0), compact=False)
    write_run(root, "lr0.5_s0", config(**{"optim.lr": 0.5, "seed": 0}), final=final(0.7))
    return root, accs


def test_groups_statistics_against_independent_computation(seeds_tree):
    root, accs = seeds_tree
    exp = load.load([root])
    g = stats.groups_table(exp)
    assert list(g.columns[:3]) == ["optim.lr", "n", "n_other"]
    assert [c for c in g.columns if c.startswith("val_acc")] == [
        "val_acc_mean", "val_acc_std", "val_acc_ci95_low", "val_acc_ci95_high"]
    row = g[g["optim.lr"] == 0.1].iloc[0]
    assert (row.n, row.n_other) == (5, 3)
    mean, sd = statistics.mean(accs), statistics.stdev(accs)
    half = T975[4] * sd / math.sqrt(5)
    assert row.val_acc_mean == pytest.approx(mean)
    assert row.val_acc_std == pytest.approx(sd)
    assert row.val_acc_ci95_low == pytest.approx(mean - half, rel=1e-3)
    assert row.val_acc_ci95_high == pytest.approx(mean + half, rel=1e-3)
    losses = [1 - a for a in accs]
    assert row.val_loss_std == pytest.approx(np.std(losses, ddof=1))
    assert row.train_loss_mean == pytest.approx(np.mean([0.9 - a for a in accs]))


def test_group_of_one_run_has_no_spread(seeds_tree):
    root, _ = seeds_tree
    g = stats.groups_table(load.load([root]))
    row = g[g["optim.lr"] == 0.5].iloc[0]
    assert (row.n, row.n_other, row.val_acc_mean) == (1, 0, 0.7)
    for c in ("val_acc_std", "val_acc_ci95_low", "val_acc_ci95_high", "train_loss_std"):
        assert math.isnan(row[c]), c


def test_report_writes_groups_files_and_marks_stopped_runs(seeds_tree, tmp_path):
    root, _ = seeds_tree
    html = build_report([root], tmp_path).read_text()
    csv, parquet = pd.read_csv(tmp_path / "groups.csv"), pd.read_parquet(tmp_path / "groups.parquet")
    assert len(csv) == len(parquet) == 2
    assert list(csv.columns) == list(parquet.columns)
    assert csv.loc[csv["optim.lr"] == 0.5, "val_acc_std"].isna().all()  # empty, not 0
    # The stopped runs are named with where they stopped (epoch, and step where run.json has it).
    assert "epoch 2, step 7" in html and "diverged e2 s7" in html
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs.status) == ["completed"] * 6 + ["diverged", "failed", "incomplete"]
    killed = runs[runs.status == "incomplete"].iloc[0]
    assert killed.stopped_epoch == 3 and killed.group == runs[runs.run_id == "lr0.1_s0"].iloc[0].group


def test_stopped_at_reads_step_or_its_detail_text(tmp_path):
    run = load.Run(0, tmp_path, {"status": "diverged", "epochs_completed": 0,
                                 "diverged": {"epoch": 1, "detail": "epoch 1 step 3: loss 4e6"}}, {})
    assert run.stopped_at == {"epoch": 1, "step": 3}
    run.info["diverged"] = {"epoch": 4, "step": 12, "detail": "whatever"}
    assert run.stopped_at == {"epoch": 4, "step": 12} and run.stop_note() == "diverged e4 s12"
    run.info = {"status": "failed", "epochs_completed": 2}
    assert run.stopped_at == {"epoch": 3, "step": None} and run.stop_note() == "failed e3"
    run.info = {"status": "completed", "epochs_completed": 3}
    assert run.stopped_at is None


# ----------------------------------------------------------------------------- comparisons

def test_paired_comparisons_recover_a_known_difference(tmp_path):
    """val_acc = seed effect (large) + lr effect + (0.02 + noise[seed]) if all_hidden. Pairing by
    seed cancels the seed effect: the mean difference is 0.02 + mean(noise), its interval the
    t interval of (0.02 + noise). An unpaired or wrongly paired comparison gets other numbers."""
    seed_effect = [0.10, -0.08, 0.03, -0.12, 0.06]
    noise = {0.1: [0.004, -0.003, 0.006, 0.001, -0.002], 0.5: [0.010, 0.002, -0.006, 0.004, 0.000]}
    lr_effect = {0.1: 0.0, 0.5: -0.05, 1.0: -0.3}
    for lr in (0.1, 0.5, 1.0):
        for s in range(5):
            base = 0.7 + seed_effect[s] + lr_effect[lr]
            for sharing in ("none", "all_hidden"):
                acc = base + ((0.02 + noise.get(lr, [0] * 5)[s]) if sharing == "all_hidden" else 0)
                status = "completed"
                if lr == 1.0 and sharing == "all_hidden" and s == 0:
                    status = "diverged"  # its pair is gone: 4 pairs at lr=1.0
                write_run(tmp_path, f"{sharing}_{lr}_{s}", config(**{"optim.lr": lr, "sharing.name": sharing,
                                                                      "seed": s}),
                          status=status, final=final(acc, val_loss=2 - acc), epochs=1, compact=False)
    exp = load.load([tmp_path])
    assert exp.axes == ["optim.lr", "sharing.name"]
    c = stats.comparisons_table(exp)
    share = c[c.key == "sharing"]
    assert set(share.value) == {"all_hidden"} and set(share.reference) == {"none"}
    for lr in (0.1, 0.5):
        row = share[(share.scope == "cell") & (share["optim.lr"] == lr)].iloc[0]
        d = 0.02 + np.array(noise[lr])
        half = T975[4] * np.std(d, ddof=1) / math.sqrt(5)
        assert row.n_pairs == 5
        assert row.val_acc_diff == pytest.approx(d.mean())
        assert row.val_acc_diff_ci95_low == pytest.approx(d.mean() - half, rel=1e-3)
        assert row.val_acc_diff_ci95_high == pytest.approx(d.mean() + half, rel=1e-3)
        assert row.val_loss_diff == pytest.approx(-d.mean())  # val_loss = 2 - acc
        assert row.sentence.startswith("sharing=all_hidden is better than sharing=none by ")
        assert "points of val accuracy and has lower val loss by" in row.sentence
        assert f"(n=5 pairs, at optim.lr={lr})" in row.sentence
    at_1 = share[(share.scope == "cell") & (share["optim.lr"] == 1.0)].iloc[0]
    assert at_1.n_pairs == 4 and at_1.val_acc_diff == pytest.approx(0.02)
    pooled = share[share.scope == "pooled"].iloc[0]
    d_all = np.concatenate([0.02 + np.array(noise[0.1]), 0.02 + np.array(noise[0.5]), [0.02] * 4])
    assert pooled.n_pairs == 14 and pooled.val_acc_diff == pytest.approx(d_all.mean())
    assert pooled.val_acc_diff_ci95_high - pooled.val_acc_diff == pytest.approx(
        t_quantile(0.975, 13) * np.std(d_all, ddof=1) / math.sqrt(14))
    assert "pooled over 3 settings of optim.lr" in pooled.sentence
    # lr has 3 values: each against the reference (the smallest), per sharing value and pooled.
    lr_rows = c[c.key == "optim.lr"]
    assert set(lr_rows.reference) == {0.1} and set(lr_rows.value) == {0.5, 1.0}
    worse = lr_rows[(lr_rows.value == 1.0) & (lr_rows.scope == "pooled")].iloc[0]
    # none: -0.3 in 5 pairs; all_hidden: -0.3 - noise[0.1][s] for the 4 seeds with a pair.
    assert worse.n_pairs == 9
    assert worse.val_acc_diff == pytest.approx(-0.3 - sum(noise[0.1][1:]) / 9)
    assert "is worse than optim.lr=0.1" in worse.sentence
    # comparisons.csv / .parquet agree with the table
    build_report([tmp_path], tmp_path / "rep")
    assert len(pd.read_csv(tmp_path / "rep" / "comparisons.csv")) == len(c)
    assert len(pd.read_parquet(tmp_path / "rep" / "comparisons.parquet")) == len(c)


def test_no_clear_difference_is_said_so(tmp_path):
    for s, (a, b) in enumerate([(0.80, 0.81), (0.82, 0.80), (0.79, 0.80)]):
        write_run(tmp_path, f"n{s}", config(seed=s), final=final(a), epochs=1, compact=False)
        write_run(tmp_path, f"t{s}", config(**{"sharing.name": "all_hidden", "seed": s}), final=final(b),
                  epochs=1, compact=False)
    row = stats.comparisons_table(load.load([tmp_path])).iloc[0]
    assert row.n_pairs == 3 and row.scope == "cell" and row["at"] == "all runs"
    assert row.val_acc_diff_ci95_low < 0 < row.val_acc_diff_ci95_high
    assert "no clear difference in val accuracy" in row.sentence
    assert "better" not in row.sentence and "worse" not in row.sentence


# ----------------------------------------------------------------------------- keys

def test_keys_a_group_option_brings_are_not_axes():
    rules = [{"module": "first", "init": "xavier"}]
    flats = [keys.flatten(config(**{"init.name": n, "init.rules": rules if n == "per_layer" else []}))
             for n in ("default", "per_layer", "xavier")]
    assert "init.rules" in keys.varying_keys(flats)
    assert keys.axis_keys(flats) == ["init.name"]
    # The same key swept within one option is an axis.
    flats.append(keys.flatten(config(**{"init.name": "per_layer", "init.rules": []})))
    assert keys.axis_keys(flats) == ["init.name", "init.rules"]
    assert keys.reference_value(["xavier", "default", "normal"]) == "default"
    assert keys.reference_value([0.5, 0.01, 0.1]) == 0.01
    assert keys.reference_value(["[32, 32]", "[8, 8]"]) == "[8, 8]"


def test_init_comparison_labels_and_axes(tmp_path):
    rules = [{"module": "first", "init": "xavier"}]
    for n in ("default", "per_layer", "constant"):
        write_run(tmp_path, n, config(**{"init.name": n, "init.rules": rules if n == "per_layer" else []}),
                  final=final(0.8) if n != "constant" else None, status="diverged" if n == "constant" else "completed",
                  epochs=1 if n != "constant" else 0, compact=False,
                  diverged={"epoch": 1, "step": 1, "detail": "loss 4e6"} if n == "constant" else None)
    runs = load.load_runs([tmp_path])
    assert sorted(r.label for r in runs) == ["init=constant", "init=default", "init=per_layer"]
    html = build_report([tmp_path], tmp_path / "rep").read_text()
    assert "init.rules" in html  # named once, as brought by a group option
    g = pd.read_csv(tmp_path / "rep" / "groups.csv")
    assert list(g.columns[:4]) == ["init", "init.rules", "n", "n_other"]
    assert g.set_index("init").loc["constant", "n_other"] == 1


# ----------------------------------------------------------------------------- compaction + loading

def test_compact_run_equals_the_epoch_folders(tmp_path):
    d = write_run(tmp_path, "r", config(), compact=False)
    before = {f: f.read_bytes() for f in d.rglob("epoch-*.parquet")}
    written = snapshot.compact_run(d)
    assert sorted(p.name for p in written) == ["activations.parquet", "metrics.parquet", "params.parquet"]
    for table in snapshot.COMPACT_TABLES:
        whole = pd.read_parquet(snapshot.compact_file(d, table))
        per_epoch = snapshot.read_table(d, table)
        sort = ["epoch"] + [c for c in ("name", "kind", "site", "split", "metric", "layer") if c in whole]
        pd.testing.assert_frame_equal(whole.sort_values(sort, ignore_index=True),
                                      per_epoch.sort_values(sort, ignore_index=True))
        assert pq.read_schema(snapshot.compact_file(d, table)).equals(snapshot.SCHEMAS[table], check_metadata=False)
        assert pd.read_parquet(d / table).shape == per_epoch.shape  # the folders still read whole
    assert {f: f.read_bytes() for f in d.rglob("epoch-*.parquet")} == before  # untouched
    assert not [f for f in d.rglob(".*")]  # no temp file left


def test_compact_run_on_a_run_without_tables_and_on_old_files(tmp_path):
    d = tmp_path / "failed_early"
    d.mkdir()
    (d / "compact").mkdir()
    (d / "compact" / "metrics.parquet").write_bytes(b"stale")
    assert snapshot.compact_run(d) == []
    assert not (d / "compact" / "metrics.parquet").exists()
    # Files written before the diagnostics columns existed: compacted in today's schema, nulls there.
    old = tmp_path / "old"
    cols = params_columns(0, np.random.default_rng(0), diagnostics_on=False)
    del cols["cos_grad"], cols["step_var"]
    old_schema = pa.schema([f for f in snapshot.SCHEMAS["params"] if f.name not in ("cos_grad", "step_var")])
    (old / "params").mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(cols, schema=old_schema), old / "params" / "epoch-0000.parquet")
    snapshot.compact_run(old)
    whole = pd.read_parquet(snapshot.compact_file(old, "params"))
    assert whole.cos_grad.isna().all() and len(whole) == len(PARAMS)


def test_loader_mixes_compact_and_per_epoch_runs(tmp_path):
    done = write_run(tmp_path, "done", config(seed=0), final=final(0.8))
    killed = write_run(tmp_path, "killed", config(seed=1), status="running", epochs=2, compact=False)
    # A killed copy of a compacted run: its compact/ holds 3 epochs, its folders only 1, run.json says running.
    import shutil
    copy = tmp_path / "killed_copy"
    shutil.copytree(done, copy)
    info = json.loads((copy / "run.json").read_text())
    info.update(status="running", epochs_completed=1)
    snapshot.write_json(copy / "run.json", info)
    for table in snapshot.TABLES:
        for f in (copy / table).glob("epoch-000[23].parquet"):
            f.unlink()
    # A completed run whose compact copy is stale (one epoch file added after compaction).
    stale = write_run(tmp_path, "stale", config(seed=2), final=final(0.8), epochs=2)
    snapshot.write_table(stale, "metrics", 3, {"epoch": [3], "split": ["val"], "metric": ["acc"], "value": [0.9]})
    # Prove the compact file is what is read for "done": change a value in its copy only.
    t = pq.read_table(snapshot.compact_file(done, "metrics")).to_pandas()
    t.loc[(t.epoch == 3) & (t.split == "val") & (t.metric == "acc"), "value"] = 0.123
    pq.write_table(pa.Table.from_pandas(t, schema=snapshot.SCHEMAS["metrics"], preserve_index=False),
                   snapshot.compact_file(done, "metrics"))

    exp = load.load([tmp_path])
    by_id = {r.path.name: r.index for r in exp.runs}
    epochs = exp.metrics.groupby("run").epoch.unique().map(sorted)
    assert epochs[by_id["done"]] == [1, 2, 3]
    assert epochs[by_id["killed"]] == [1, 2]
    assert epochs[by_id["killed_copy"]] == [1]
    assert epochs[by_id["stale"]] == [1, 2, 3]
    m = exp.metrics
    acc3 = m[(m.run == by_id["done"]) & (m.epoch == 3) & (m.split == "val") & (m.metric == "acc")].value
    assert list(acc3) == [0.123]
    assert exp.compact_used["metrics"] == 1   # done; the stale one was re-read from its folder
    assert exp.compact_used["params"] == 2    # done and stale (its params were not changed)
    p = exp.params
    assert sorted(p[p.run == by_id["killed_copy"]].epoch.unique()) == [0, 1]
    n_rows = len(snapshot.read_table(killed, "params"))
    assert len(p[p.run == by_id["killed"]]) == n_rows
    assert set(p.columns) >= {"run", "epoch", "name", "kind", "site", "norm", "cos_grad", "step_var"}


def test_loader_finds_nested_runs_once_and_skips_table_folders(tmp_path):
    write_run(tmp_path / "sweep_a", "job1", config(seed=0), final=final(0.8), epochs=1)
    write_run(tmp_path / "sweep_b" / "deeper", "job2", config(seed=1), final=final(0.8), epochs=1)
    found = load.find_runs([tmp_path, tmp_path / "sweep_a"])
    assert [p.name for p in found] == ["job1", "job2"]
    with pytest.raises(FileNotFoundError):
        load.find_runs([tmp_path / "missing"])


# ----------------------------------------------------------------------------- diagnostics

def test_update_ratio_and_noise_scale_values(tmp_path):
    # value norm at epoch e = 10 * (e + 1); update norm at e = e; grad norm = 2, step_var = 2 * 2^2.
    def norm_of(epoch, row):
        return {"value": 10.0 * (epoch + 1), "update": float(epoch)}.get(row[1], 2.0)

    write_run(tmp_path, "r", config(), final=final(0.8), norm_of=norm_of)
    exp = load.load([tmp_path])
    ratio = diagnostics.update_ratios(exp.params)
    r = ratio[ratio.name == "net.1.weight"].set_index("epoch").ratio
    assert list(r.index) == [1, 2, 3]
    assert r.to_list() == pytest.approx([1 / 10, 2 / 20, 3 / 30])  # update(e) / value(e-1)
    b = diagnostics.noise_scales(exp.params, [64])
    # step_var = 2 * norm^2 per tensor, so B = 64 * 2 per layer and for all parameters together.
    assert set(b.layer) == {"net.1", "net.3", "all parameters"}
    assert b.noise_scale.to_numpy() == pytest.approx(128.0)
    b32 = diagnostics.noise_scales(exp.params, [32])
    assert b32.noise_scale.to_numpy() == pytest.approx(64.0)


@pytest.fixture(scope="module")
def diagnostics_report(tmp_path_factory):
    """Tied and untied runs with 2 seeds each, diagnostics recorded; one diverged run."""
    root = tmp_path_factory.mktemp("diag")
    for s in range(2):
        for tied in (False, True):
            write_run(root, f"{'tied' if tied else 'untied'}_{s}",
                      config(**{"sharing.name": "all_hidden" if tied else "none", "seed": s}),
                      final=final(0.8 + 0.01 * s - 0.02 * tied), seed=s, tied=tied,
                      acc_curve=lambda e, s=s, t=tied: 0.5 + 0.1 * e + 0.01 * s - 0.02 * t)
    write_run(root, "tied_div", config(**{"sharing.name": "all_hidden", "seed": 2}), status="diverged", epochs=1,
              tied=True, diverged={"epoch": 2, "step": 5, "detail": "loss nan"})
    out = root / "rep"
    return build_report([root], out).read_text(), out


def test_diagnostics_figures_are_drawn(diagnostics_report):
    html, out = diagnostics_report
    for name in ("update_ratio", "site_cosine", "noise_scale", "curves", "grid", "sharing", "param_evolution",
                 "grads", "histograms", "activations"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
        assert f'<img src="{name}.png"' in html
    assert "no clear difference" in html or "better than" in html or "worse than" in html


def test_diagnostics_figures_skipped_without_their_rows(tmp_path):
    write_run(tmp_path, "old", config(), final=final(0.8), diagnostics_on=False)
    html = build_report([tmp_path], tmp_path / "rep").read_text()
    for name in ("site_cosine", "noise_scale"):
        assert not (tmp_path / "rep" / f"{name}.png").exists()
        assert name not in html
    assert (tmp_path / "rep" / "update_ratio.png").exists()  # update rows are there


def test_many_groups_colour_only_best_and_worst(tmp_path):
    for i in range(14):
        write_run(tmp_path, f"g{i}", config(**{"optim.lr": 0.01 * (i + 1)}), final=final(0.5 + 0.01 * i), epochs=1,
                  compact=False)
    exp = load.load([tmp_path])
    exp.groups_table = stats.groups_table(exp)
    from runner.report.figures.common import assign_colours
    assign_colours(exp)
    ranked = {g.rank: g.values["optim.lr"] for g in exp.groups if g.highlighted}
    assert ranked == {"best 1": 0.14, "best 2": 0.13, "best 3": 0.12,
                      "worst 1": 0.01, "worst 2": 0.02, "worst 3": 0.03}


def test_unreadable_run_json_does_not_make_every_key_an_axis(tmp_path):
    write_run(tmp_path, "a", config(**{"optim.lr": 0.1}), final=final(0.8), epochs=1, compact=False)
    write_run(tmp_path, "b", config(**{"optim.lr": 0.5}), final=final(0.7), epochs=1, compact=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    exp = load.load([tmp_path])
    assert exp.axes == ["optim.lr"]
    broken = next(r for r in exp.runs if r.path.name == "broken")
    assert broken.status == "unreadable" and not broken.completed
    build_report([tmp_path], tmp_path / "rep")
    g = pd.read_csv(tmp_path / "rep" / "groups.csv")
    assert g.n.sum() == 2 and g.n_other.sum() == 1
