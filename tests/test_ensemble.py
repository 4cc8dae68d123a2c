"""Ensembles: jobs that differ only in lr, momentum, weight decay, dropout, init or seed train as
one batched model, and each member's numbers equal the same config run alone, bit for bit on
the CPU: metrics, every stored tensor (values, grads, per-site grads), activations, run.json."""
import json

import numpy as np
import pandas as pd
import pytest

from runner import snapshot
from runner.engine import run, run_members
from runner.sweep import job_runs

from conftest import run_cli


def _tensors(run_dir):
    return {(t["epoch"], t["name"], t["kind"], t["site"]): t["array"] for t in snapshot.read_tensors(run_dir)}


def _assert_same_run(a, b):
    """Bit for bit: every table compared exactly (assert_frame_equal's default allows 1e-5)."""
    pd.testing.assert_frame_equal(pd.read_parquet(a / "metrics"), pd.read_parquet(b / "metrics"), check_exact=True)
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert np.array_equal(ta[key], tb[key]), key
    pd.testing.assert_frame_equal(snapshot.read_activations(a), snapshot.read_activations(b), check_exact=True)
    columns = ["epoch", "name", "kind", "site", "mean", "std", "norm", "min", "max", "cos_grad", "step_var"]
    pd.testing.assert_frame_equal(snapshot.read_params(a, columns), snapshot.read_params(b, columns), check_exact=True)


GRIDS = {
    "mlp-sgd": (["model.hidden=[16,16,16]", "sharing=all_hidden"],
                [["seed=0", "optim.lr=0.05"], ["seed=1", "optim.lr=0.1", "optim.weight_decay=0.01"],
                 ["seed=0", "init=xavier", "optim.momentum=0.9"], ["seed=2", "model.dropout=0.3", "init=kaiming"],
                 ["seed=1", "optim.lr=0.2", "model.dropout=0.1"]]),
    # Narrow layers (3 wide: a stacked matmul rounds differently there, so `exact` falls back to one
    # per member) and 50-row batches (not a multiple of the CPU cross-entropy's vector width).
    "mlp-narrow": (["model.hidden=[8,3]", "data.batch_size=50", "data.limit=500"],
                   [["seed=0", "optim.lr=0.05"], ["seed=0", "optim.lr=0.2", "model.dropout=0.2"],
                    ["seed=0", "optim.weight_decay=0.01", "optim.momentum=0.9"], ["seed=3", "init=xavier"]]),
    # Evaluation in chunks of eval_batch_size // K rows would take two members' 120 test rows one
    # at a time (the run alone: two at a time): a one-row matmul rounds differently from a wider one.
    "mlp-eval-chunks": (["data.eval_batch_size=2"], [["seed=0", "optim.lr=0.05"], ["seed=1", "optim.lr=0.1"]]),
    "cnn-adam": (["model=cnn", "model.channels=[4,4,4]", "sharing=all_hidden", "optim=adam", "data.limit=300"],
                 [["seed=0", "optim.lr=0.01"], ["seed=1", "optim.lr=0.003", "optim.weight_decay=0.01"],
                  ["seed=0", "init=xavier", "model.dropout=0.2"]]),
    # 99 rows of 350: member 1's rows start off a 64-byte boundary, and MKL's products round a
    # misaligned operand otherwise (each member's block is copied where so); the last batch of 6
    # rows pins the head's backward to one thread in the run alone: dx too, not only dW.
    "mlp-misaligned": (["model.hidden=[350]", "data.batch_size=99"], [["seed=0"], ["seed=1", "optim.lr=0.05"]]),
    # Sigmoids (LeNet's): on all members' rows at once, the split of 3 x 100 x 120 elements between
    # two threads falls inside member 1, whose elements there took the kernel's scalar tail.
    "lenet-sigmoid": (["model=lenet", "optim=adam", "data.batch_size=100"],
                      [["seed=0", "optim.lr=0.001"], ["seed=0", "optim.lr=0.002"], ["seed=0", "optim.lr=0.003"]]),
}


@pytest.mark.parametrize("grid", GRIDS)
def test_ensemble_members_equal_separate_runs(grid, make_cfg, tmp_path):
    common, members = GRIDS[grid]
    cfgs = [make_cfg(*common, *m) for m in members]
    result = run_members(cfgs, [tmp_path / "ens" / str(i) for i in range(len(cfgs))], members, ensemble=True)
    assert [i["status"] for i in result.infos] == ["completed"] * len(cfgs)
    for i, (cfg, info) in enumerate(zip(cfgs, result.infos)):
        alone = run(cfg, tmp_path / "alone" / str(i))
        assert info["ensemble"] == {"size": len(cfgs), "members": [str(j) for j in sorted(
            range(len(cfgs)), key=lambda j: int(cfgs[j].seed))]}
        assert alone["ensemble"] is None and info["final"] == alone["final"]
        assert info["params"] == alone["params"] and info["tie_groups"] == alone["tie_groups"]
        _assert_same_run(tmp_path / "ens" / str(i), tmp_path / "alone" / str(i))


def test_ensemble_launcher_groups_and_isolates_a_diverging_member(tmp_path, data_root):
    r = run_cli("-m", "runner.train", "-m", "optim.lr=0.1,10000", "optim=sgd,adam", "sharing=none,all_hidden",
                f"data.root={data_root}", "trainer.epochs=2", "trainer.progress=false", "device=cpu",
                "snapshot.tensors=false", f"hydra.sweep.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr      # e.g. the resource tracker's, had the workers been killed
    # sgd/adam x tied/untied: 4 groups of 2 (lr is a member key), 2 side by side on 2 cores
    assert "paramlab: 8 jobs as 4 ensembles (2+2+2+2), 2 side by side (1 thread each)" in r.stdout
    # Each handed to a worker once: by runner.cli right after the checks (prelaunch), the launcher
    # finding them there (a mismatch would run them again once the first ones had ended).
    assert r.stdout.count("paramlab: ensemble of 2:") == 4, r.stdout
    statuses = {j["_dir"]: j["status"] for j in job_runs(tmp_path / "e")}
    assert statuses["optim.lr=0.1,optim=sgd,sharing=none"] == "completed"
    assert statuses["optim.lr=10000,optim=sgd,sharing=none"] == "diverged"
    good = json.loads((tmp_path / "e" / "optim.lr=0.1,optim=sgd,sharing=none" / "run.json").read_text())
    assert good["epochs_completed"] == 2 and np.isfinite(good["final"]["train_loss"])
    assert good["ensemble"]["size"] == 2 and good["threads"] == 1
    bad = json.loads((tmp_path / "e" / "optim.lr=10000,optim=sgd,sharing=none" / "run.json").read_text())
    assert bad["diverged"]["epoch"] == 1 and bad["diverged"]["step"] >= 0 and bad["epochs_completed"] == 0
    # No epoch finished, yet metrics/ reads whole (an empty file): as a user's pandas reads it
    metrics = pd.read_parquet(tmp_path / "e" / "optim.lr=10000,optim=sgd,sharing=none" / "metrics")
    assert list(metrics.columns) == ["epoch", "split", "metric", "value"] and len(metrics) == 0


def test_batched_sweep_runs_each_ensemble_once(tmp_path, data_root):
    """With hydra.sweeper.max_batch_size Hydra launches the sweep batch by batch, each planned by
    itself: nothing may be handed to a worker ahead (prelaunch), or a batch's ensemble would run
    twice at once (found by a review: the first batch trained the group a worker already ran)."""
    r = run_cli("-m", "runner.train", "-m", "trainer.epochs=2,1", "optim.lr=0.1,0.2", "hydra.sweeper.max_batch_size=2",
                f"data.root={data_root}", "data.limit=200", "trainer.progress=false", "device=cpu",
                f"hydra.sweep.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("paramlab: ensemble of 2:") == 2 and r.stdout.count("jobs as 1 ensemble (2)") == 2, r.stdout
    assert {j["status"] for j in job_runs(tmp_path / "b")} == {"completed"}


def test_member_group_index_outlives_grouping_changes(make_cfg):
    """Training (one batch per seed group) and evaluation (one batch for all) alternate groupings;
    a CUDA graph recorded with a grouping's index tensor reads it at the same address in every
    replay, so switching back must give the very same tensor, with its values intact."""
    import torch

    from runner.batched import Members
    from runner.engine import build

    torch.manual_seed(0)
    templates, tie_map = zip(*[build(make_cfg()) for _ in range(3)])
    members = Members(list(templates), tie_map[0], "cpu", [0, 1, 2])
    training = members.set_groups([(0, 2), (2, 3)])
    assert training.tolist() == [0, 0, 1]
    assert members.set_groups([(0, 3)]).tolist() == [0, 0, 0]
    assert members.set_groups([(0, 2), (2, 3)]) is training and training.tolist() == [0, 0, 1]


def test_dropout_masks_rate_scale_and_own_generator(make_cfg):
    """Each member drops a fraction p of its rows' units with its own rate, scales the rest by
    1 / (1 - p), and draws exactly the mask a run alone with the same dropout seed draws."""
    import torch

    from runner.batched import Members
    from runner.engine import build

    rates = [0.0, 0.2, 0.5]
    torch.manual_seed(0)
    templates, tie_map = zip(*[build(make_cfg()) for _ in rates])
    members = Members(list(templates), tie_map[0], "cpu", [11, 12, 13])
    x = torch.ones(len(rates) * 4000, 8)
    # Twice: buffers are reused between calls, and the second draw continues each member's stream.
    outs = [members.dropout(x, rates, channelwise=False).view(len(rates), 4000, 8) for _ in range(2)]
    for m, p in enumerate(rates):
        model, ties = build(make_cfg())
        alone = Members([model], ties, "cpu", [11 + m])
        generator = torch.Generator().manual_seed(11 + m)          # an independent reference
        for out in outs:
            dropped = (out[m] == 0).double().mean().item()
            assert abs(dropped - p) < 0.02, (p, dropped)
            kept = out[m][out[m] != 0]
            assert torch.equal(kept, torch.full_like(kept, 1.0 / (1.0 - p)))
            assert torch.equal(alone.dropout(torch.ones(4000, 8), [p], channelwise=False), out[m])
            uniforms = torch.rand(4000, 8, generator=generator) if p else torch.zeros(4000, 8)
            assert torch.equal((uniforms < 1.0 - p).float() / (1.0 - p), out[m])


def test_dropout_drawn_ahead_gives_the_masks_drawn_call_by_call(make_cfg):
    """A forward whose dropout calls begin as the last forward's did draws every call's uniforms at
    its first (Members._mask): each member must still get, forward after forward, the masks it
    draws call by call, alone or in an ensemble, with rates that differ per member and per layer
    (rows without dropout in between), across batch sizes that change (a forward that departs from
    the plan) and a forward without dropout (evaluation) in between."""
    import torch

    from runner.batched import Members
    from runner.engine import build

    rates = ["[0.0,0.3,0.0]", "[0.5,0.0,0.2]", "[0.2,0.2,0.2]", "[0.0,0.0,0.0]"]
    cfgs = [make_cfg("model.hidden=[8,8,8]", f"model.dropout={r}") for r in rates]
    seeds = [21, 22, 23, 24]

    def members(indices):
        def built(i):
            torch.manual_seed(100 + i)                 # each member's init, whoever it trains with
            return build(cfgs[i])
        templates, ties = zip(*[built(i) for i in indices])
        return Members(list(templates), ties[0], "cpu", [seeds[i] for i in indices])

    batches = [64, 64, 64, 32, 64, 64, "eval", 64, 64]
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(5))

    def outputs(m, ahead: bool):
        m.train(True)
        out = []
        for b in batches:
            if not ahead:
                m._drops = []                  # no plan: every call draws its own
            if b == "eval":
                m.train(False)
                with torch.no_grad():
                    m.forward(x[:8], [(0, m.k)])
                m.train(True)
                continue
            with torch.no_grad():
                out.append(m.forward(x[:b], [(0, m.k)]).view(m.k, b, -1))
        return out

    # Calls in varying order (a model whose forward branches), or stopping early: a member's masks
    # as it draws them alone (and, where no call departs, as drawn call by call). As the modules
    # do, a call is made only where some member's rate is not 0: members 0 and 1 (0 in some layers
    # only) then see other calls alone than together, and must still draw the same.
    shapes = [(16, 8), (16, 8), (16, 5)]
    forwards = [[0, 1, 2], [0, 1, 2], [0, 2, 1], [0, 2, 1], [1, 0, 2], [0], [0, 1, 2], [0, 1, 2]]
    rates_of = [tuple(float(r.strip("[]").split(",")[j]) for r in rates) for j in range(3)]

    def masks(indices, ahead: bool = True):
        m, out = members(indices), []
        modules = [mod for mod in m.model.modules() if type(mod).__name__ == "BatchedDropout"]
        for calls in forwards:
            m.new_forward()
            if not ahead:
                m._drop_plan = []
            drawn = {}
            for j in calls:
                layer_rates = [rates_of[j][i] for i in indices]
                if any(layer_rates):
                    drawn[j] = m.dropout(torch.ones(len(indices) * 16, shapes[j][1]), layer_rates,
                                         channelwise=False, module=modules[j]).view(len(indices), 16, -1)
                else:
                    drawn[j] = torch.ones(len(indices), 16, shapes[j][1])
            out.append(drawn)
        return out

    ensemble = masks(range(4))
    for i in range(4):
        for alone, together in zip(masks([i]), ensemble):
            assert all(torch.equal(alone[j][0], together[j][i]) for j in together), i
    for f in (0, 1):                           # before any departure: as drawn call by call
        assert all(torch.equal(ensemble[f][j], masks(range(4), ahead=False)[f][j]) for j in ensemble[f])

    together = outputs(members(range(4)), ahead=True)
    reference = outputs(members(range(4)), ahead=False)
    for a, r in zip(together, reference):
        assert torch.equal(a, r)
    for i in range(4):
        alone = outputs(members([i]), ahead=True)
        for a, t in zip(alone, together):
            assert torch.equal(a[0], t[i])


@pytest.mark.parametrize("model", [["model.hidden=[8,8,8]", "sharing=all_hidden", "model.dropout=0.2"],
                                   ["model.hidden=[10,16]"],
                                   # sigmoid on 100 x 350 elements: two threads split them at 17500, not a
                                   # multiple of the kernel's vector block, so one thread rounds others
                                   ["model.hidden=[350]", "model.activation=sigmoid", "data.batch_size=100"]])
def test_one_thread_ensemble_equals_two_thread_runs(model, make_cfg, tmp_path):
    """The ensemble launcher's workers train with one thread each, a run alone with all cores:
    an MLP member must still equal its run alone, though MKL splits products of 5-11 rows
    differently per thread count (a 10-wide input layer, the weight gradient of a 10-class head with
    16 inputs, the head as W h^T in evaluation). (Convolutions' weight gradients also depend on the
    thread count; that is not covered: see the README.)"""
    import torch

    cfgs = [make_cfg(*model, f"optim.lr={lr}") for lr in (0.05, 0.2)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ens = run_members(cfgs, [tmp_path / "e0", tmp_path / "e1"], ensemble=True).infos
        torch.set_num_threads(2)
        for i, cfg in enumerate(cfgs):
            alone = run(cfg, tmp_path / f"a{i}")
            assert ens[i]["final"] == alone["final"]
            _assert_same_run(tmp_path / f"e{i}", tmp_path / f"a{i}")
    finally:
        torch.set_num_threads(threads)


def test_in_place_activation_after_the_input_layer(make_cfg):
    """A model may change the input layer's output in place (ReLU(inplace=True)): the batched
    layer's output must allow that in an ensemble as it does for a run alone."""
    import torch
    from torch import nn

    from runner.batched import Members
    from runner.engine import build

    for k in (1, 2):
        torch.manual_seed(0)
        templates, tie_map = zip(*[build(make_cfg("model.hidden=[8]")) for _ in range(k)])
        for t in templates:
            t.net[2] = nn.ReLU(inplace=True)
        members = Members(list(templates), tie_map[0], "cpu", list(range(k)))
        members.train(True)
        members.forward(torch.randn(16, 1, 28, 28), [(0, k)]).sum().backward()
        assert all(p.grad is not None for p in members.leaves)


def test_feature_major_layers_only_where_the_model_allows(make_cfg):
    """On the CPU a built-in MLP's Linear layers hand on feature-major rows (memory (features,
    rows): faster products for narrow layers), a run alone and each ensemble alike; a user's model
    does not (its forward may view a layer's output, which that layout refuses: here .view(-1, 4)),
    nor a model with an activation that rounds a scalar tail (tanh)."""
    import torch
    from torch import nn

    from runner.batched import Members
    from runner.engine import build
    from runner.sharing import build_tie_map

    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(784, 8), nn.Linear(8, 10)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            return self.head(h.view(-1, 4).relu().view(h.shape[0], 8))

    def members(make, k):
        torch.manual_seed(0)
        templates = [make() for _ in range(k)]
        return Members(templates, build_tie_map(templates[0]), "cpu", list(range(k)))

    for k in (1, 3):
        mlp = members(lambda: build(make_cfg("model.hidden=[8,8]"))[0], k)
        strides = []
        mlp.model.net[4].register_forward_hook(lambda module, inputs, out: strides.append(out.stride()))
        mlp.forward(torch.randn(16, 1, 28, 28), [(0, k)]).sum().backward()
        assert mlp.feature_major and strides == [(1, 16 * k)]
        assert not members(lambda: build(make_cfg("model.hidden=[8,8]", "model.activation=tanh"))[0], k).feature_major
        custom = members(Viewing, k)
        assert not custom.feature_major
        custom.forward(torch.randn(16, 1, 28, 28), [(0, k)]).sum().backward()
        assert all(p.grad is not None for p in custom.leaves)


def test_exact_returns_each_members_own_bits():
    """exact() may use a batched product only where it equals the member-by-member one: for these
    shapes (one row, two outputs: measured to round differently batched) its result must still be
    the per-member one, bit for bit."""
    import torch

    from runner.batched import _bmm_wxt, _loop_wxt, _rows_wxt, exact

    g = torch.Generator().manual_seed(3)
    for k, o, rows, i in [(9, 2, 1, 120), (18, 2, 1, 120), (4, 15, 1, 128), (8, 1, 100, 400), (3, 3, 32, 256)]:
        w, xs, bs = torch.randn(k, o, i, generator=g), torch.randn(k, rows, i, generator=g), torch.zeros(0)
        assert torch.equal(exact("test-bmm", _bmm_wxt, _loop_wxt, w, xs, bs), _loop_wxt(w, xs, bs))
        assert torch.equal(exact("test-rows", _rows_wxt, _loop_wxt, w, xs[:1], bs), _loop_wxt(w, xs[:1], bs))


@pytest.mark.parametrize("width", [2, 5])
def test_evaluation_chunks_do_not_depend_on_the_ensemble_size(width):
    """Narrow input layers round each row differently by how many rows one matmul takes, so a
    member must be evaluated in the same chunks as its run alone (under the old rule, rows //
    K per chunk, members of 6 differed from their runs alone in the last bits: 1667 against 10000
    rows)."""
    import torch
    from torch import nn

    from runner.batched import Members
    from runner.engine import evaluate
    from runner.sharing import build_tie_map

    def model(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10))

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10000, 1, 28, 28, generator=g), torch.randint(0, 10, (10000,), generator=g)
    alone = [evaluate(Members([model(s)], build_tie_map(model(s)), "cpu", [s]), x, y, 10000) for s in range(6)]
    templates = [model(s) for s in range(6)]
    loss, acc = evaluate(Members(templates, build_tie_map(templates[0]), "cpu", list(range(6))), x, y, 10000)
    assert [(a[0][0], a[1][0]) for a in alone] == list(zip(loss, acc))


@pytest.mark.parametrize("when", ["encoding", "writing"])
def test_a_member_whose_files_fail_fails_alone(make_cfg, tmp_path, monkeypatch, when):
    """One member's params file of epoch 2 fails (while its bytes are encoded, which on the CPU
    happens in the training thread, or while they are written, in a writer thread): that member
    fails with its first epoch kept, the others train on to the end."""
    import errno

    real = snapshot.prepare_table

    def flaky(run_dir, table, epoch, columns):
        def full():
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir))
        if run_dir.name == "1" and table == "params" and epoch == 2:
            if when == "encoding":
                full()
            return full
        return real(run_dir, table, epoch, columns)

    monkeypatch.setattr(snapshot, "prepare_table", flaky)
    cfgs = [make_cfg("trainer.epochs=3", f"optim.lr={lr}") for lr in (0.05, 0.1, 0.2)]
    result = run_members(cfgs, [tmp_path / str(i) for i in range(3)])
    infos = [json.loads((tmp_path / str(i) / "run.json").read_text()) for i in range(3)]
    assert [i["status"] for i in infos] == ["completed", "failed", "completed"]
    assert [i["epochs_completed"] for i in infos] == [3, 1, 3]
    assert infos[1]["error"].startswith("OSError: No space left on device")
    assert sorted(snapshot.read_params(tmp_path / "1").epoch.unique()) == [0, 1]
    assert 1 in result.errors and not (set(result.errors) - {1})


@pytest.mark.parametrize("encode_here", [True, False])
def test_writer_encodes_where_told_and_writes_in_order(encode_here):
    """engine._Writer: `prepare()` runs in the submitting thread on the CPU (encode_here) and in a
    writer thread otherwise; a member's writes run in submission order; a member whose prepare
    fails is reported once and skipped from then on, the others go on."""
    import threading

    from runner.engine import _Writer

    writer = _Writer(2, encode_here=encode_here)
    prepared_in, written = [], []

    def job(member, n, fail=False):
        def prepare():
            prepared_in.append(threading.current_thread() is threading.main_thread())
            if fail:
                raise ValueError(f"member {member} cannot encode")
            return lambda: written.append((member, n))
        return prepare

    try:
        for n in range(3):
            writer.submit(0, job(0, n))
            writer.submit(1, job(1, n, fail=n == 1))
        writer.wait()
    finally:
        writer.close()
    assert set(prepared_in) == {encode_here}
    assert [n for m, n in written if m == 0] == [0, 1, 2]
    assert [n for m, n in written if m == 1] == [0]          # its prepare failed at 1: 2 was skipped
    failures = writer.failures()
    assert list(failures) == [1] and "cannot encode" in str(failures[1]) and writer.failures() == {}


def test_writer_closes_after_a_wakeup_lost_to_an_interrupt():
    """A KeyboardInterrupt inside a queue put's notify leaves a stale waiter in the queue's
    condition: the next notify wakes nobody. close() must still end its threads (the command hung
    after Ctrl-C when it did not)."""
    import threading
    import time

    from runner.engine import _Writer

    writer = _Writer(1)
    q = writer.queues[0]
    for _ in range(200):                     # the writer thread is waiting on its queue
        if len(q.not_empty._waiters) == 1:
            break
        time.sleep(0.01)
    stale = threading.Lock()
    stale.acquire()
    q.not_empty._waiters.appendleft(stale)   # what the interrupted notify leaves behind
    closing = threading.Thread(target=writer.close, daemon=True)
    closing.start()
    closing.join(5)
    assert not closing.is_alive() and not writer.threads[0].is_alive()


def test_writer_survives_a_put_interrupted_before_it_counted_its_item():
    """An item queued but not counted (put() interrupted between the two): the writer thread
    writes it and lives on (task_done would raise), wait() and close() end."""
    import threading
    import time

    from runner.engine import _Writer

    writer = _Writer(1)
    written = []
    q = writer.queues[0]
    with q.not_empty:
        q._put((0, lambda: written.append(1)))      # what put() does before it counts the item
        q.not_empty.notify()
    for _ in range(200):                            # written (and its task_done called) first
        if written and len(q.not_empty._waiters) == 1:
            break
        time.sleep(0.01)
    writer.submit(0, lambda: lambda: written.append(2))
    done = threading.Thread(target=lambda: (writer.wait(), writer.close()), daemon=True)
    done.start()
    done.join(5)
    assert not done.is_alive() and written == [1, 2]


def test_statistics_of_wide_rows_equal_each_members_own(make_cfg, tmp_path):
    """A member's statistics of a 128 x 784 tensor (rows of 100352 values: two threads split the
    reduction where the number of rows in the call says) are those of its run alone, bit for bit."""
    import torch

    from runner.batched import Members
    from runner.engine import build
    from runner.recorder import Recorder

    cfg = make_cfg("model.hidden=[128]")

    def model(i):                                           # Members takes over its templates: new ones
        torch.manual_seed(i)
        net, tie_map = build(cfg)
        with torch.no_grad():
            net.net[1].weight.normal_()                     # values like the ones seen 1 ulp apart
        return net, tie_map

    def params(idx, folder):
        built = [model(i) for i in idx]
        members = Members([b[0] for b in built], built[0][1], "cpu", [0] * len(idx))
        recorder = Recorder(members, cfg.snapshot, torch.zeros(2, 1, 28, 28), [])
        dirs = [tmp_path / folder / str(i) for i in idx]
        for m, prepare in recorder.snapshot(0, 0, dirs, range(len(idx))).items():
            prepare()()
        return {i: snapshot.read_params(d) for i, d in zip(idx, dirs)}

    together = params(list(range(6)), "together")
    for i in range(6):
        pd.testing.assert_frame_equal(together[i], params([i], f"alone{i}")[i], check_exact=True)
