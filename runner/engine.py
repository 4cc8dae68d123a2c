"""The engine: one explicit training loop for a single run and for an ensemble alike.

`run(cfg, run_dir)` trains one run; `run_members(cfgs, run_dirs)` trains K runs that share an
architecture as one batched model (runner.batched); a single run is K = 1 through the very same
code. Each epoch: one permutation per seed; per step: gather the batch, forward all members,
each member's mean cross-entropy, the divergence check, backward of their sum, capture
gradients, optimizer step. Then validation, the snapshot, and for each member in this order:
its tables, its checkpoint, its run.json (so run.json never claims an epoch whose tables and
checkpoint are not on disk, and a killed run continues after its last completed epoch).

A member whose loss goes non-finite or above diverge_factor x its first loss is frozen and
recorded as `diverged`; the others go on. A member whose own files fail (disk full, permission)
is recorded as `failed` with its traceback in error.log, and the others go on; an exception in
the shared computation fails every member still running (their finished epochs stay on disk,
and the checkpoint lets the same command continue them).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .config import UserError, check_schema, one_line, plain_config, re_device, validate

# Config keys that do not change a run's results: a run directory may be continued with other values
# (trainer.compile: the same step, recorded as a CUDA graph or not; the CPU ignores it).
IGNORED_FOR_RESUME = (("sweep",), ("trainer", "progress"), ("trainer", "compile"))
# Threads writing an ensemble's files, members side by side (a single run has one): 64 members'
# files of a seed-preset epoch took 0.6 s with one thread and ~0.3 s with four on 2 cores (measured).
WRITER_THREADS = max(4, (os.cpu_count() or 1) // 2)


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" or re_device(name):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but no CUDA GPU is available here; use device=auto or device=cpu")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(f"device={name} but this machine has {torch.cuda.device_count()} GPU(s): "
                            f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def build(cfg, device=None):
    """Validated config -> (model, tie_map): built, tied, then initialized (tied tensors once).

    Uses the global torch RNG (seed it first). `device="meta"` builds without allocating,
    which is how the command-line checks find tie and init mistakes before any run starts."""
    import torch

    from .init import initialize
    from .model import build_model
    from .sharing import tie

    with torch.device(device or "cpu"):
        model = build_model(cfg.model)
    tie_map = tie(model, cfg.sharing)
    initialize(model, cfg.init)
    return model, tie_map


_DATA_CACHE: dict = {}


def load_data(cfg, device):
    """The dataset as tensors on `device`; kept for later runs in the same process (sweeps)."""
    return _load_data(str(cfg.data.root), cfg.data.limit, device)


def _load_data(root: str, limit, device, download: bool = True):
    from . import data

    key = (str(Path(root).resolve()), limit, str(device))
    with _DATA_LOCK:                  # a preload under way: wait for it rather than load twice
        if key not in _DATA_CACHE:
            _DATA_CACHE.clear()
            _DATA_CACHE[key] = data.load(root, limit, device, download=download)
        return _DATA_CACHE[key]


_DATA_LOCK = threading.Lock()


def preload_data(root: str, limit, device_name: str, background: bool = False) -> None:
    """Load the CPU dataset into this process's cache ahead of its runs (~0.15-0.2 s): at once (an
    idle worker) or in a thread (the ensemble launcher's own process while it hands out the jobs;
    torch must be imported already, as two threads importing it at once can deadlock). Quiet: a
    problem is for the run's own load to report. Only a set already decompressed in data.root:
    this runs while the command's checks may still find a mistake, and then nothing is written."""
    def load() -> None:
        from . import data

        try:
            device = resolve_device(device_name)
            if device.type == "cpu" and data.ready(root):
                _load_data(root, limit, device, download=False)
        except Exception:
            pass

    if background:
        threading.Thread(target=load, name="paramlab-preload", daemon=True).start()
    else:
        load()


def _log(line: str) -> None:
    print(line, flush=True)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def comparable(config: dict) -> dict:
    """A config without the keys that do not change results (for 'same run?' checks)."""
    c = json.loads(json.dumps(config))
    for path in IGNORED_FOR_RESUME:
        node = c
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return c


def read_json(path: Path) -> Optional[dict]:
    """A JSON file (run.json, sweep.json), or None if it is missing or not whole."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def completed(info: Optional[dict]) -> bool:
    """Whether a run.json records a completed run. A completed run started again is left as it
    is: not trained, not locked, none of its files rewritten (runner.paths.output_subdir)."""
    return isinstance(info, dict) and info.get("status") == "completed"


def completed_run(run_dir) -> Optional[dict]:
    """run_dir's run.json if it records a completed run, else None."""
    info = read_json(Path(run_dir) / "run.json")
    return info if completed(info) else None


def check_run_dir(cfg, run_dir: Path, label: Optional[str] = None) -> Optional[dict]:
    """A user error if `run_dir` holds a run of another config or is being written by a live
    process; else its run.json (None if it has none). Creates nothing."""
    from .lock import check_unlocked

    where = label or f"run directory {run_dir}"
    if (Path(run_dir) / "sweep.json").is_file():
        raise UserError(f"{where} is a sweep's directory; give this run a directory of its own")
    existing = read_json(Path(run_dir) / "run.json")
    if (Path(run_dir) / "run.json").exists() and not (isinstance(existing, dict)
                                                      and isinstance(existing.get("config", {}), dict)):
        raise UserError(f"{where} holds a run.json that is not a paramlab run's; give this run another directory, "
                        f"or delete {Path(run_dir) / 'run.json'}")
    if existing is not None:
        old, new = comparable(existing.get("config") or {}), comparable(plain_config(cfg))
        if old != new and not _same_but_the_gpu(old, new):
            raise UserError(f"{where} holds a run with another config "
                            f"({_differences(old, new)}); continue it with its own config, give this run "
                            f"another directory, or delete {run_dir} to start over")
    check_unlocked(run_dir, "run directory")
    return existing


def _same_but_the_gpu(old: dict, new: dict) -> bool:
    """Comparable configs that differ at most in which GPU (a sweep gives parallel jobs cuda:0,
    cuda:1, ...): `device` compared by kind, cpu or cuda, auto as it resolves on this machine."""
    def kind(name) -> str:
        name = str(name)
        return resolve_device("auto").type if name == "auto" else name.split(":")[0]

    return {**old, "device": None} == {**new, "device": None} and kind(old.get("device")) == kind(new.get("device"))


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{k}.")
            if inner:
                out.append(inner)
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)} there, {json.dumps(b)} here")
    return ", ".join(out)[:300]


# ---------------------------------------------------------------------------------------- API

def run(cfg, run_dir, overrides: Sequence[str] = ()) -> dict:
    """Train one run into `run_dir`; returns its run.json content. A run that failed re-raises
    its exception (its run.json says `failed`, error.log holds the traceback)."""
    return train(cfg, run_dir, overrides)[0]


def train(cfg, run_dir, overrides: Sequence[str] = ()):
    """`run()`, returning (run.json content, the trained model as a plain nn.Module)."""
    result = run_members([cfg], [run_dir], [list(overrides)], keep_model=True)
    info = result.infos[0]
    if result.errors.get(0) is not None:
        raise result.errors[0]
    return info, result.models.get(0)


class Result:
    def __init__(self, n: int):
        self.infos: List[Optional[dict]] = [None] * n
        self.skipped: set = set()          # runs found completed and left as they are (logged `skip`)
        self.errors: Dict[int, BaseException] = {}
        self.models: Dict[int, object] = {}


def run_members(cfgs: Sequence, run_dirs: Sequence, overrides: Optional[Sequence[Sequence[str]]] = None,
                ensemble: bool = False, keep_model: bool = False) -> Result:
    """Train runs that share an architecture together (an ensemble; or one run). Runs already
    completed are left as they are; killed or failed ones continue from their checkpoint.
    User mistakes raise UserError before anything is written."""
    import torch

    from .lock import DirLock

    n = len(cfgs)
    run_dirs = [Path(d) for d in run_dirs]
    overrides = [list(o) for o in overrides] if overrides is not None else [[] for _ in cfgs]
    for cfg, run_dir in zip(cfgs, run_dirs):
        check_schema(cfg)
        validate(cfg)
        check_run_dir(cfg, run_dir)
    device = resolve_device(cfgs[0].device)
    result = Result(n)
    locks = []
    try:
        from . import checkpoint

        pending, templates, starts = [], {}, {}
        for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
            # Read again: another process may have finished it while this one imported torch.
            existing = read_json(run_dir / "run.json")
            if completed(existing):
                result.infos[i] = existing   # left as it is: not even locked
                result.skipped.add(i)
                _complete_compaction(run_dir)
                _log(f"paramlab: skip {run_dir.name}: already completed in {run_dir}; left as it is")
                continue
            locks.append(DirLock(run_dir, "run directory").acquire())
            starts[i] = checkpoint.load(run_dir) if existing is not None else None
            if starts[i] is not None:   # run.json's list also holds continuations killed before an epoch
                starts[i]["resumed"] = existing.get("resumed") or []
            torch.manual_seed(cfg.seed)
            templates[i] = build(cfg)
            pending.append(i)
        # Members train together when they start at the same epoch and have the same structure.
        parts: Dict[tuple, List[int]] = {}
        for i in pending:
            start = starts[i]["epoch"] if starts[i] else 0
            parts.setdefault((start, _signature(*templates[i])), []).append(i)
        for part in parts.values():
            _Group([cfgs[i] for i in part], [run_dirs[i] for i in part], [overrides[i] for i in part],
                   [starts[i] for i in part], [templates[i] for i in part], device, ensemble
                   ).train(result, part, keep_model)
    finally:
        for lock in locks:
            lock.release()
    return result


def _complete_compaction(run_dir: Path) -> None:
    """A completed run killed before all its compact copies were written (they follow run.json's
    `completed`) gets them now; one whose copies are all there is not touched."""
    from . import snapshot
    from .lock import DirLock

    missing = [t for t in snapshot.COMPACT_TABLES
               if not snapshot.compact_file(run_dir, t).is_file() and snapshot.epoch_files(run_dir, t)]
    if not missing:
        return
    try:
        lock = DirLock(run_dir, "run directory").acquire()
    except (UserError, OSError):   # another live process holds it (that one finishes it), or read-only
        return
    try:
        snapshot.compact_run(run_dir, missing)
    except OSError:
        pass                       # the per-epoch files stay the source of truth
    finally:
        lock.release()


def _signature(model, tie_map) -> tuple:
    """What must be equal for runs to train as one batched model: module paths and types,
    parameter shapes, ties."""
    modules = tuple((path, type(m).__name__, tuple((k, tuple(p.shape)) for k, p in m._parameters.items()
                                                   if p is not None))
                    for path, m in model.named_modules(remove_duplicate=False))
    return modules, json.dumps(tie_map.tie_groups())


def _dropout_seed(seed: int) -> int:
    """Seed of a member's dropout generator: derived from, but not equal to, its batch-order seed."""
    return (int(seed) * 1_000_003 + 0x5EED) % (2 ** 63)


# ---------------------------------------------------------------------------------------- the loop

class _Group:
    """K members (sorted by seed, so members sharing a batch order sit side by side) trained as one."""

    def __init__(self, cfgs, run_dirs, overrides, starts, templates, device, ensemble: bool):
        order = sorted(range(len(cfgs)), key=lambda i: int(cfgs[i].seed))
        self.order = order
        self.cfgs = [cfgs[i] for i in order]
        self.run_dirs = [run_dirs[i] for i in order]
        self.overrides = [overrides[i] for i in order]
        self.starts = [starts[i] for i in order]
        self.templates = [templates[i] for i in order]
        self.device, self.ensemble = device, ensemble
        self.k = len(cfgs)
        self.infos: List[dict] = []
        self.errors: Dict[int, BaseException] = {}      # member -> the exception it failed with

    def train(self, result: Result, positions: Sequence[int], keep_model: bool) -> None:
        import torch

        from .batched import Members, check_batchable
        from .data import normalise
        from .loss import member_losses
        from .model import activation_paths
        from .optim import Optimizer
        from .recorder import Recorder

        t_start = time.perf_counter()
        cfg0, device, k = self.cfgs[0], self.device, self.k
        seeds = [int(c.seed) for c in self.cfgs]
        groups = _runs(seeds)                                     # [(first, last + 1)] per seed
        layers = activation_paths(self.templates[0][0])
        tie_map = self.templates[0][1]
        members = Members([t[0] for t in self.templates], tie_map, device, [_dropout_seed(s) for s in seeds])
        check_batchable(members)
        layers = [p for p in layers if _has(members.model, p)]  # outputs inside a vmapped module are not seen
        dataset = load_data(cfg0, device)
        self.n_train = dataset.n_train
        optimizer = Optimizer(members.leaves, [c.optim for c in self.cfgs], device,
                              on_device_step=device.type == "cuda")
        generators = [torch.Generator(device=device).manual_seed(seeds[s]) for s, _ in groups]
        member_group = members.set_groups(groups).clone()         # (K,): each member's seed group
        snap = cfg0.snapshot
        n_act = min(int(snap.activation_batch), int(dataset.test_y.shape[0]))
        recorder = Recorder(members, snap, dataset.test_x[:n_act], layers) if snap.enabled else None
        start = self.starts[0]["epoch"] if self.starts[0] else 0
        epochs, every, bs = int(cfg0.trainer.epochs), int(snap.every), int(cfg0.data.batch_size)
        firsts = [self._start_info(m, tie_map, device, start) for m in range(k)]   # no file touched yet
        self.infos = infos = [info for info, _ in firsts]
        status = ["running"] * k
        writer = _Writer(min(k, WRITER_THREADS), encode_here=device.type == "cpu")
        bar = None
        try:   # from here on a failure is recorded in every member still running, and the writer closed
            for m, (_, prepare) in enumerate(firsts):   # each member's first files (cleared tables, run.json)
                writer.submit(m, prepare)
            limits: List[Optional[float]] = [None] * k
            if start:
                limits = self._restore(members, optimizer, generators, recorder)
            elif recorder is not None:
                for m, write in recorder.snapshot(0, 0, self.run_dirs, range(k)).items():
                    writer.submit(m, write)
            totals = _Totals(k, device, float(cfg0.trainer.diverge_factor), optimizer, limits)
            use_graph = bool(cfg0.trainer.compile) and device.type == "cuda"
            # One thread (an ensemble beside others): batches gathered as uint8 and normalised (data.Dataset).
            raw = device.type == "cpu" and torch.get_num_threads() == 1
            x_all, y_all, n = dataset.train_raw if raw else dataset.train_x, dataset.train_y, dataset.n_train
            capture_always = use_graph and recorder is not None       # a graph is recorded once: always capture

            def step(idx) -> None:
                """One optimizer step for every member; idx (G, B): each seed group's batch indices.
                Nothing here reads back to the host on a GPU (so it can be a CUDA graph)."""
                x = torch.index_select(x_all, 0, idx.reshape(-1))        # (G*B, 1, 28, 28); 3x faster than x_all[...] here
                if raw:
                    x = normalise(x)
                y = torch.index_select(y_all, 0, idx.reshape(-1)).view(idx.shape)    # (G, B); y_all[idx]: ~50 us
                y = y.expand(k, -1) if len(groups) == 1 else y if len(groups) == k else y[member_group]  # (K, B)
                losses, predicted = member_losses(members.forward(x, groups), y)   # (K,) mean losses, (K, B)
                totals.add(losses.detach(), predicted, y)               # may freeze members
                optimizer.zero_grad()
                # The sum's backward gives each member's loss gradient 1.0 (a member's rows reach only its
                # own parameters, so frozen members need no mask). A scalar's backward, not an explicit
                # gradient: that one's first call imports torch.fx and sympy (~0.3 s).
                losses.sum().backward()
                if members.capturing:                                   # tied tensors' .grad: their sites' total;
                    recorder.accumulate()                               # gradients captured before the step
                optimizer.step()

            def forward_only(idx) -> None:
                """The step's forward in eval mode, without gradients: no state changes (a probe)."""
                members.train(False)
                try:
                    with torch.no_grad():
                        members.forward(torch.index_select(x_all, 0, idx.reshape(-1)), groups)
                finally:
                    members.train(True)

            step_fn = _GraphStep(step, forward_only, len(groups), bs, device) if use_graph else step
            from tqdm import tqdm

            label = self.run_dirs[0].name[:40] if k == 1 else f"ensemble of {k}"
            bar = tqdm(range(start + 1, epochs + 1), desc=label, unit="epoch", leave=False,
                       disable=None if cfg0.trainer.progress else True, file=sys.stderr)
            for epoch in bar:
                t_epoch = time.perf_counter()
                snapshot_epoch = recorder is not None and (epoch % every == 0 or epoch == epochs)
                members.capturing = snapshot_epoch or capture_always
                members.train(True)
                if members.capturing:
                    recorder.reset()
                totals.reset()
                perms = torch.stack([torch.randperm(n, device=device, generator=g) for g in generators])  # (G, n)
                steps = 0
                for i in range(0, n, bs):
                    step_fn(perms[:, i:i + bs])
                    steps += 1
                    if totals.per_step and self._diverged(totals.drain(epoch), status, infos) and \
                            "running" not in status:
                        break
                self._diverged(totals.finish(epoch), status, infos)
                active = [m for m in range(k) if status[m] == "running"]
                if not active:
                    break
                train_loss, train_acc = totals.means(n)
                val_loss, val_acc = evaluate(members, dataset.test_x, dataset.test_y, int(cfg0.data.eval_batch_size))
                writes = recorder.snapshot(epoch, steps, self.run_dirs, active) if snapshot_epoch else {}
                # At most one epoch of files in flight: wait for the previous one, fail members whose files failed.
                self._collect(writer, status, optimizer)
                stacked = _stacked_state(members, optimizer, recorder, epoch, device)
                for m in [m for m in active if status[m] == "running"]:
                    writer.submit(m, self._commit(m, epoch, (train_loss[m], train_acc[m], val_loss[m], val_acc[m]),
                                                  t_epoch, t_start, stacked, optimizer, members.dropout_generators[m],
                                                  generators[int(member_group[m])], totals, writes.get(m)))
                if k == 1 and status[0] == "running":
                    bar.set_postfix(loss=f"{train_loss[0]:.4f}", val_acc=f"{val_acc[0]:.4f}")
            self._collect(writer, status, optimizer)
            for m in range(k):
                if status[m] == "running":
                    status[m] = "completed"
        except BaseException as e:  # the shared computation: every member still running fails
            self._collect(writer, status, optimizer)
            for m in range(k):
                if status[m] == "running":
                    self._fail(m, e, status, optimizer)
            self._finish_all(status, t_start)
            raise
        finally:
            if bar is not None:
                bar.close()
            writer.close()
        self._finish_all(status, t_start)
        for m, position in enumerate(positions[i] for i in self.order):
            result.infos[position] = infos[m]
            if m in self.errors:
                result.errors[position] = self.errors[m]
        if keep_model:
            for m, position in enumerate(positions[i] for i in self.order):
                result.models[position] = export_model(self.cfgs[m], members, m)

    # ------------------------------------------------------------------ per member bookkeeping
    def _start_info(self, m: int, tie_map, device, start: int):
        """(the run.json a member starts or continues with, a prepare for _Writer.submit whose write
        clears what the run had written after its last completed epoch and writes that run.json:
        its writer runs it before any file of the run's epochs)."""
        import torch

        from . import snapshot

        run_dir, cfg = self.run_dirs[m], self.cfgs[m]
        if start:
            info = json.loads(self.starts[m]["info"])
            # run.json's list, a superset of the checkpoint's copy (which has none of the continuations
            # killed before they completed an epoch: each one counts)
            before = max(info.get("resumed") or [], self.starts[m].get("resumed") or [], key=len)
            info["resumed"] = list(before) + [{"from_epoch": start, "at": _now()}]
            _log(f"paramlab: resuming {run_dir} after epoch {start} of {int(cfg.trainer.epochs)}")
            if info.get("paramlab_version") != __version__:
                _log(f"paramlab: {run_dir.name} was started by paramlab {info.get('paramlab_version')} and continues "
                     f"with {__version__}: its later epochs may differ in the last bits from a run never stopped")
        else:
            info = {"paramlab_version": __version__, "run_id": run_dir.name, "status": "running",
                    "config": plain_config(cfg), "overrides": list(self.overrides[m]),
                    "epochs": int(cfg.trainer.epochs), "epochs_completed": 0,
                    "params": {"unique": tie_map.unique, "total": tie_map.total},
                    "tie_groups": tie_map.tie_groups(), "final": None, "wall_time_s": None, "epoch_times_s": [],
                    "device": str(device), "torch_version": torch.__version__, "threads": torch.get_num_threads(),
                    "pid": os.getpid(), "started_at": _now(), "finished_at": None, "error": None, "diverged": None,
                    "resumed": [], "ensemble": None,
                    "steps_per_epoch": -(-int(self.n_train) // int(cfg.data.batch_size))}
        info.update(status="running", error=None, pid=os.getpid(), threads=torch.get_num_threads(),
                    finished_at=None, device=str(device))
        info["config"] = plain_config(cfg)        # e.g. trainer.progress, which may differ when continuing
        info["ensemble"] = {"size": self.k, "members": [d.name for d in self.run_dirs]} if self.ensemble else None
        info["_wall_before"] = float(info.get("wall_time_s") or 0.0) if start else 0.0
        first = _public(info)

        def write() -> None:
            for f in run_dir.glob(".*.tmp-*"):  # a checkpoint's or run.json's temp file a kill left (the
                f.unlink(missing_ok=True)       # directory is this process's: it holds its lock)
            log = run_dir / "error.log"
            if log.exists():                    # an earlier attempt's failure: kept, named by its time
                stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(log.stat().st_mtime))
                os.replace(log, run_dir / f"error.{stamp}.log")
            if start:
                _clear_tables_after(run_dir, start)
                shutil.rmtree(run_dir / "compact", ignore_errors=True)  # rewritten when the run ends
            else:
                snapshot.clear_tables(run_dir)  # a run restarted into its old directory starts clean
            snapshot.write_json(run_dir / "run.json", first)

        return info, lambda: write                  # as _Writer.submit takes it: nothing to encode first

    def _restore(self, members, optimizer, generators, recorder) -> List[Optional[float]]:
        """Load every member's checkpoint into the batched state (all continue after one epoch)."""
        import torch

        states = self.starts
        with torch.no_grad():
            for i, p in enumerate(members.params):
                p.copy_(torch.stack([s["params"][i] for s in states]))
            for name, buffer in members.buffers.items():
                buffer.copy_(torch.stack([s["buffers"][name] for s in states]))
        optimizer.load_member_states([s["optim"] for s in states])
        for g, (first, _) in zip(generators, _runs([int(c.seed) for c in self.cfgs])):
            g.set_state(states[first]["batch_rng"])
        for g, s in zip(members.dropout_generators, states):
            g.set_state(s["dropout_rng"])
        if self.device.type == "cuda" and states[0].get("cuda_rng") is not None:
            torch.cuda.set_rng_state(states[0]["cuda_rng"], self.device)
        if recorder is not None:
            recorder.previous = [p.detach().clone() for p in members.params]
            recorder.previous_epoch = states[0]["epoch"]
            if states[0].get("previous") is not None:
                recorder.previous_epoch = -1
                recorder.previous = [torch.stack([s["previous"][i] for s in states]).to(self.device)
                                     for i in range(len(members.params))]
        return [s.get("limit") for s in states]

    def _commit(self, m: int, epoch: int, metrics, t_epoch: float, t_start: float, stacked: dict, optimizer,
                dropout_generator, generator, totals, tables=None):
        """Member m's end of epoch for the writer: a function that encodes its snapshot files
        (`tables`: the recorder's function for params/, tensors/ and activations/, if a snapshot
        epoch), its metrics file, its checkpoint and run.json, and returns the function that writes
        them in that order, durable together (snapshot.durable_together: run.json last). Its state
        is taken now, from `stacked` (_stacked_state's); run.json's fields change only once the files
        are written."""
        from . import checkpoint, snapshot

        run_dir, info = self.run_dirs[m], self.infos[m]
        train_loss, train_acc, val_loss, val_acc = metrics
        fields = self._epoch_fields(m, epoch, metrics, t_epoch, t_start)
        state = {
            "epoch": epoch, "params": [p[m].clone() for p in stacked["params"]],
            "buffers": {name: b[m].clone() for name, b in stacked["buffers"].items()},
            "optim": optimizer.member_state(m, stacked["optim"]),
            "batch_rng": generator.get_state(), "dropout_rng": dropout_generator.get_state(),
            "cuda_rng": stacked["cuda_rng"], "limit": totals.limit_of(m),
            # values at the last snapshot epoch, if that was not this one (for `update` rows)
            "previous": None if stacked["previous"] is None else [t[m].clone() for t in stacked["previous"]]}

        def prepare():
            snapshot_files = tables() if tables is not None else None
            metrics = snapshot.prepare_table(run_dir, "metrics", epoch, {
                "epoch": [epoch] * 4, "split": ["train", "train", "val", "val"],
                "metric": ["loss", "acc", "loss", "acc"], "value": [train_loss, train_acc, val_loss, val_acc]})
            public = _public({**info, **fields})
            saved = checkpoint.prepare(run_dir, {**state, "info": json.dumps(public)})
            run_json = snapshot.prepare_json(run_dir / "run.json", public)

            def write() -> None:
                with snapshot.durable_together(run_dir):
                    if snapshot_files is not None:
                        snapshot_files()
                    metrics()
                    saved()
                    run_json()
                info.update(fields)

            return write

        return prepare

    def _collect(self, writer: "_Writer", status, optimizer) -> None:
        """Wait for the files in flight; a member whose files failed fails alone."""
        writer.wait()
        for m, error in writer.failures().items():
            if status[m] == "running":
                self._fail(m, error, status, optimizer)

    def _epoch_fields(self, m: int, epoch: int, metrics, t_epoch: float, t_start: float) -> dict:
        """run.json's fields for a completed epoch (read while no write of this member is in flight)."""
        info = self.infos[m]
        train_loss, train_acc, val_loss, val_acc = metrics
        times = list(info["epoch_times_s"])[:epoch - 1] + [round(time.perf_counter() - t_epoch, 6)]
        return {"epochs_completed": epoch, "epoch_times_s": times,
                "final": {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc},
                "wall_time_s": round(info["_wall_before"] + time.perf_counter() - t_start, 3)}

    def _fail(self, m: int, error: BaseException, status, optimizer) -> None:
        """Member m failed: frozen, its traceback in error.log, run.json says so."""
        from . import snapshot

        status[m] = "failed"
        optimizer.freeze(m)
        self.infos[m]["error"] = one_line(error)
        self.errors[m] = error
        try:
            (self.run_dirs[m] / "error.log").write_text("".join(traceback.format_exception(error)))
        except OSError:
            pass
        try:
            snapshot.write_json(self.run_dirs[m] / "run.json", _public({**self.infos[m], "status": "failed"}))
        except OSError:
            pass  # disk full / read-only: the previous run.json stays valid

    def _diverged(self, events, status, infos) -> bool:
        """Record members whose loss went bad: [(member, epoch, step, loss)]. True if any."""
        for m, epoch, step, loss in events:
            if status[m] != "running":
                continue
            status[m] = "diverged"
            detail = f"epoch {epoch} step {step}: loss {loss:.4g}"
            infos[m]["diverged"] = {"epoch": epoch, "step": step, "loss": loss, "detail": detail}
            infos[m]["error"] = f"diverged at {detail}"
            if self.k > 1:
                _log(f"paramlab: ensemble member {self.run_dirs[m].name} diverged at {detail}")
        return bool(events)

    def _finish_all(self, status, t_start: float) -> None:
        from . import checkpoint, snapshot

        for m, info in enumerate(self.infos):
            info["status"] = status[m] if status[m] != "running" else "failed"
            info["wall_time_s"] = round(info["_wall_before"] + time.perf_counter() - t_start, 3)
            info["finished_at"] = _now()
            try:
                if info["status"] != "completed" and not snapshot.epoch_files(self.run_dirs[m], "metrics"):
                    # Ended before its first epoch did (diverged or failed at a step of epoch 1): an
                    # empty metrics file (epoch-0000, no rows), so that metrics/ still reads whole.
                    snapshot.write_table(self.run_dirs[m], "metrics", 0, {c: [] for c in snapshot.SCHEMAS["metrics"].names})
                snapshot.write_json(self.run_dirs[m] / "run.json", _public(info))
                if info["status"] == "completed":
                    checkpoint.remove(self.run_dirs[m])  # only once run.json says so: never continued again
            except OSError:
                pass
            try:
                snapshot.compact_run(self.run_dirs[m])   # one file per table, for reports over many runs
            except OSError:
                snapshot.forget(self.run_dirs[m])
            for key in [k for k in info if k.startswith("_")]:
                del info[key]


class _Writer:
    """Writes run files in background threads so training goes on while they reach the disk
    (each file: temp name, fsync, rename, fsync of the folder; an epoch's files durable together, two
    syncs: snapshot.durable_together). What is submitted is a member's
    `prepare()`, which encodes its files (Arrow tables, Parquet bytes, the checkpoint, JSON: CPU
    and the GIL) and returns the function that writes them (file system calls, which free the GIL).
    With `encode_here` (the CPU) the encoding runs at once in the submitting (training) thread and
    only the writing in the background: two 9-member ensembles side by side on 2 cores trained ~4%
    faster (5.32 -> 5.10 s, interleaved runs) and the seed preset ~4% faster than with the encoding
    in the writer threads, where it contended with training for the GIL. On a GPU the training
    thread is the one to spare (cores are free): both run in the writer threads there. A member's
    files are written in the order they were submitted, by one thread (member m by thread m mod n),
    so members' files are written side by side. A member whose encoding or write fails is skipped
    from then on; `failures()` reports it once."""

    def __init__(self, threads: int = 1, encode_here: bool = False):
        import queue
        import threading

        self.encode_here = encode_here
        self.doomed: set = set()                  # members whose encoding failed (their writer says so)
        self.queues: List["queue.Queue"] = [queue.Queue() for _ in range(max(1, threads))]
        self.errors: Dict[int, BaseException] = {}
        self.reported: set = set()
        self.threads = [threading.Thread(target=self._run, args=(q,), name=f"paramlab-writer-{i}", daemon=True)
                        for i, q in enumerate(self.queues)]
        for t in self.threads:
            t.start()

    def _run(self, q) -> None:
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                member, write = item
                if member not in self.errors:
                    try:
                        write()
                    except BaseException as e:  # noqa: BLE001 (reported to the loop, which fails the member)
                        self.errors[member] = e
            finally:
                try:
                    q.task_done()
                except ValueError:   # an interrupted put() queued the item but did not count it
                    pass

    def submit(self, member: int, prepare: Callable[[], Callable[[], None]]) -> None:
        if member in self.errors or member in self.doomed:
            return
        if self.encode_here:
            try:
                write = prepare()
            except Exception as e:  # noqa: BLE001 (this member's files only: it fails alone, at the next collect)
                # In order, as in the writer thread: what was submitted before is still written.
                self.doomed.add(member)

                def write(error: BaseException = e) -> None:
                    raise error
        else:
            def write() -> None:
                prepare()()
        self.queues[member % len(self.queues)].put((member, write))

    def wait(self) -> None:
        """Until every submitted write is done (or its thread has ended)."""
        for q, t in zip(self.queues, self.threads):
            with q.all_tasks_done:
                while q.unfinished_tasks > 0 and t.is_alive():
                    q.all_tasks_done.wait(0.1)

    def failures(self) -> Dict[int, BaseException]:
        new = {m: e for m, e in list(self.errors.items()) if m not in self.reported}
        self.reported |= set(new)
        return new

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for q, t in zip(self.queues, self.threads):
            # Joined with a nudge: a KeyboardInterrupt that lands inside a put()'s notify (Ctrl-C at
            # an epoch's end) can leave the queue's condition holding a stale waiter, so the next
            # notify wakes nobody and the writer sleeps on a queue that holds its None (seen: the
            # command hung after Ctrl-C in ~1 of 25 tries). notify_all wakes it whatever the list.
            # (wait() polls for the same reason, and _run forgives a put() interrupted before it
            # counted its item.)
            while t.is_alive():
                t.join(0.05)
                with q.not_empty:
                    q.not_empty.notify_all()


def _public(info: dict) -> dict:
    return {k: v for k, v in info.items() if not k.startswith("_")}


def _runs(values: Sequence) -> List[Tuple[int, int]]:
    """[(start, end)] of the runs of equal consecutive values."""
    out, s = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[s]:
            out.append((s, i))
            s = i
    return out


def _has(model, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def _clear_tables_after(run_dir: Path, epoch: int) -> None:
    """Remove table files of epochs after `epoch` (written before a kill, not yet checkpointed)."""
    from .snapshot import TABLES, epoch_files, epoch_of, forget, own_file

    for table in TABLES:
        for f in epoch_files(run_dir, table):
            if epoch_of(f) > epoch:
                f.unlink()
        folder = Path(run_dir) / table
        for f in folder.glob(".*") if folder.is_dir() else []:
            if own_file(f.name):                # a temp file of ours; a user's own dotfile stays
                f.unlink()
    forget(run_dir)          # what this process may hold of the run's files (compaction reads them)


def checks_loss_per_step(device) -> bool:
    """On the CPU a loss value per step is free; on a GPU it would sync the host every step, so
    there the losses are checked on the device and read once per epoch."""
    return device.type == "cpu"


class _Totals:
    """Per member: the epoch's train-loss sum, correct count, and the divergence check (a loss
    that is non-finite or above `factor` x the member's first loss freezes the member before
    its backward, so that step never changes it).

    On the CPU the K losses are read every step (a few microseconds there): the check runs on
    the host, a member is frozen at its first bad step and a run whose members all diverged
    stops there. On a GPU a host read would sync every step, so there the check, the freezing
    and the sums stay on the device (a step can be a CUDA graph) and are read once per epoch."""

    def __init__(self, k: int, device, factor: float, optimizer, limits: List[Optional[float]]):
        import torch

        self.k, self.factor, self.optimizer = k, factor, optimizer
        self.per_step = checks_loss_per_step(device)
        self.limits = list(limits)                           # factor x each member's first loss (float64)
        self.limit = None if any(v is None for v in limits) else torch.tensor(limits, dtype=torch.float64,
                                                                              device=device)
        self.correct = torch.zeros(k, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
        self.host_sums = [0.0] * k
        self.bad_step = torch.full((k,), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros(k, dtype=torch.float64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.host_step = 0
        self.hits = None                                   # CPU: (steps, K, B) bool, each step's right answers
        self.eq = torch.eq                                 # (this module imports torch only where it runs)
        self.new: List[Tuple[int, int, float]] = []        # (member, step, loss) not yet reported
        self.reported: set = set()

    def reset(self) -> None:
        for t in (self.correct, self.loss_sum, self.step):
            t.zero_()
        self.host_sums = [0.0] * self.k
        self.host_step = 0
        if self.hits is not None:
            self.hits.zero_()

    def add(self, losses, predicted, y) -> None:
        """losses (K,), predicted and y (K, B)."""
        b = y.shape[1]
        if self.per_step:
            # Each step's hits into the epoch's (steps, K, B) buffer, counted once at the end: one op
            # a step instead of compare, sum and add (~6 us a step less, seed preset).
            if self.hits is None or self.hits.shape[0] <= self.host_step or self.hits.shape[2] < b:
                self._grow(b)
            self.eq(predicted, y, out=self.hits[self.host_step, :, :b])
            self._add_on_host(losses.tolist(), b)
        else:
            self.correct += (predicted == y).sum(1)
            self._add_on_device(losses.detach().double(), b)

    def _grow(self, b: int) -> None:
        import torch

        steps = max(64, 2 * self.host_step + 1)
        hits = torch.zeros(steps, self.k, max(b, self.hits.shape[2] if self.hits is not None else 0),
                           dtype=torch.bool, device=self.correct.device)
        if self.hits is not None:
            hits[:self.hits.shape[0], :, :self.hits.shape[2]] = self.hits
        self.hits = hits

    def _add_on_host(self, values: List[float], b: int) -> None:
        for m, v in enumerate(values):
            if not self.optimizer.alive_host[m]:
                continue
            if self.limits[m] is None:
                self.limits[m] = v * self.factor
            if v <= self.limits[m]:
                self.host_sums[m] += v * b
            else:                                           # `not <=` also catches NaN
                self.optimizer.freeze(m)                    # before the backward: this step leaves it as it was
                self.new.append((m, self.host_step, v))
        self.host_step += 1

    def _add_on_device(self, loss, b: int) -> None:
        import torch

        if self.limit is None:                              # the first step (eager, never inside a graph)
            self.limit = loss * self.factor
        alive = self.optimizer.alive > 0
        bad = ~(loss <= self.limit) & alive
        first = bad & (self.bad_step < 0)
        self.bad_step.copy_(torch.where(first, self.step, self.bad_step))
        self.bad_loss.copy_(torch.where(first, loss, self.bad_loss))
        self.optimizer.freeze_where(bad)
        self.loss_sum += torch.where(alive & ~bad, loss * b, torch.zeros_like(self.loss_sum))
        self.step += 1

    def drain(self, epoch: int) -> List[Tuple[int, int, int, float]]:
        """CPU, after every step: the members that diverged in it, as (member, epoch, step, loss)."""
        new, self.new = self.new, []
        return [(m, epoch, s, v) for m, s, v in new]

    def finish(self, epoch: int) -> List[Tuple[int, int, int, float]]:
        """End of the epoch (the GPU's one sync): members that diverged in it."""
        if self.per_step:
            return self.drain(epoch)
        steps, losses = self.bad_step.tolist(), self.bad_loss.tolist()
        self.optimizer.alive_host = self.optimizer.alive.tolist()
        self.limits = self.limit.tolist() if self.limit is not None else self.limits
        new = [(m, epoch, s, losses[m]) for m, s in enumerate(steps) if s >= 0 and m not in self.reported]
        self.reported |= {m for m, *_ in new}
        return new

    def means(self, n: int) -> Tuple[List[float], List[float]]:
        sums = self.host_sums if self.per_step else self.loss_sum.tolist()
        correct = self.hits.sum((0, 2)) if self.per_step and self.hits is not None else self.correct
        return [s / n for s in sums], [c / n for c in correct.tolist()]

    def limit_of(self, m: int) -> Optional[float]:
        return self.limits[m]


def _stacked_state(members, optimizer, recorder, epoch: int, device) -> dict:
    """What the members' checkpoints of this epoch are cut from: the (K, ...) parameters, buffers,
    optimizer state and last snapshot's values. On a GPU they are copied to the host once for all
    members, one copy per tensor (a copy per member and tensor was a host sync each, ~15-20 a member
    for the seed preset; no measurable change in epoch time at 64 members on an H100); on the CPU they
    are the live tensors. _commit clones each member's rows from them."""
    import torch

    def out(ts):
        return [t.detach().cpu() for t in ts]

    previous = None
    if recorder is not None and recorder.previous is not None and recorder.previous_epoch != epoch:
        previous = out(recorder.previous)
    return {"params": out(members.params), "buffers": dict(zip(members.buffers, out(members.buffers.values()))),
            "optim": optimizer.stacked_state(host=device.type == "cuda"),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, "previous": previous}


class _GraphStep:
    """`trainer.compile=true` (the default) on CUDA: the whole step of all members (gather,
    forward, losses, divergence check, backward, gradient capture, optimizer step) recorded once
    as a CUDA graph and replayed per batch, so small models are not bound by kernel launches.
    Only the batch indices are copied in; a last partial batch runs eagerly. The first steps run
    eagerly on a side stream (warm-up), as recording requires. A model whose forward reads a
    value back to the host cannot be recorded: a probe (the forward in eval mode, no gradients, so
    no dropout draw or statistics update) with CUDA's sync check set to raise finds it first, and
    if recording fails all the same, one line says so and every step runs eagerly (nothing of the
    failed recording ran, so no step is lost or run twice)."""

    WARMUP = 3

    def __init__(self, step, probe, groups: int, batch_size: int, device):
        import torch

        self.step, self.probe, self.graph, self.warm, self.eager = step, probe, None, 0, False
        self.idx = torch.zeros(groups, batch_size, dtype=torch.long, device=device)

    def __call__(self, idx) -> None:
        import torch

        if self.eager or idx.shape != self.idx.shape:
            self.step(idx)
        elif self.graph is None and self.warm < self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(idx)
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
        elif self.graph is None:
            self.idx.copy_(idx)
            if self._record():
                self.graph.replay()  # recording does not run the step
            else:
                self.step(idx)
        else:
            self.idx.copy_(idx)
            self.graph.replay()

    def _record(self) -> bool:
        import torch

        torch.cuda.synchronize()
        mode = torch.cuda.get_sync_debug_mode()
        try:
            _sync_debug_mode("error")
            self.probe(self.idx)
        except RuntimeError as e:
            return self._eager(e)
        finally:
            _sync_debug_mode(mode)
        stream = torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step(self.idx)
        except Exception as e:  # noqa: BLE001 (any failure to record: train eagerly instead)
            torch.cuda.set_stream(stream)    # the recording's stream may still be current
            torch.cuda.synchronize()
            return self._eager(e)
        self.graph = graph
        return True

    def _eager(self, error: BaseException) -> bool:
        self.eager = True
        _log(f"paramlab: CUDA graph recording failed ({one_line(error)}); training with eager steps "
             "(trainer.compile=false skips the attempt)")
        return False


def _sync_debug_mode(mode) -> None:
    """torch.cuda.set_sync_debug_mode without its 'prototype feature' warning to the user."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.cuda.set_sync_debug_mode(mode)


# Evaluation on the CPU: at least EVAL_ROWS rows a chunk, more (up to EVAL_MAX_ROWS) where the
# model's widest module output (Members.widest, floats per example) keeps a chunk's widest output
# within EVAL_FLOATS floats per member (the old fixed bound: 500 rows of a 16-channel 28x28
# convolution). The cap bounds what an expansion no module output shows (inside a user's forward)
# can cost at 10x the old 500 rows.
EVAL_ROWS = 500
EVAL_MAX_ROWS = 5000
EVAL_FLOATS = 500 * 16 * 28 * 28


def evaluate(members, x, y, batch_size: int) -> Tuple[List[float], List[float]]:
    """Per member mean cross-entropy and accuracy on (x, y). Every member sees the same rows
    (shared input); per-example losses are kept and summed once, so chunking changes nothing."""
    import torch

    from .loss import cross_entropy, predictions

    k, n = members.k, x.shape[0]
    # On the CPU the same chunks whatever K: rows per member from the model alone (never from K),
    # the rows split into chunks of equal size. A narrow layer's matmul rounds each row differently
    # by how many rows it takes at once (measured: 2-11 wide input layers, also on one thread), so
    # a member evaluated in other chunks than its run alone differs in the last bits. The bound
    # keeps the activations' memory at K x EVAL_FLOATS floats per layer (~1.6 GB for 64 members; a
    # smaller data.eval_batch_size lowers it); a narrow model gets bigger chunks, which run faster
    # (seed preset: 500-row chunks 4.0-4.8 ms an epoch, 5000-row 3.2 ms; its widest output is the
    # flattened image, 784 floats a row: 8000 rows, capped at 5000, so two chunks of 5000). On a GPU
    # (launch-bound, no bit-equality claimed) batch_size rows per member, up to 16384 rows in all.
    if x.device.type == "cpu":
        most = max(1, min(n, batch_size, max(EVAL_ROWS, min(EVAL_MAX_ROWS, EVAL_FLOATS // members.widest))))
        chunk = -(-n // -(-n // most))
    else:
        chunk = max(1, min(batch_size, 16384 // k))
    per_example = torch.empty(k, n, device=x.device)
    correct = torch.zeros(k, dtype=torch.int64, device=x.device)
    members.train(False)
    with torch.no_grad():
        for i in range(0, n, chunk):
            yy = y[i:i + chunk]
            logits = members.forward(x[i:i + chunk], [(0, k)])          # (K*b, 10)
            per_example[:, i:i + chunk] = cross_entropy(logits, yy.expand(k, -1))
            correct += (predictions(logits).view(k, -1) == yy).sum(1)
    members.train(True)
    return (per_example.double().sum(1) / n).tolist(), (correct.double() / n).tolist()


def export_model(cfg, members, m: int):
    """Member m as a plain nn.Module (built like the run's, holding its trained tensors)."""
    import torch

    state = torch.random.get_rng_state()
    model, tie_map = build(cfg)
    torch.random.set_rng_state(state)
    with torch.no_grad():
        named = dict(model.named_parameters())
        for name, p in zip(members.names, members.params):
            named[name].copy_(p[m])
        buffers = dict(model.named_buffers())
        for name, b in members.buffers.items():
            if name in buffers:
                buffers[name].copy_(b[m])
    return model.to(members.device)
