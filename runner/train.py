"""`python -m runner.train [overrides]`: one run, or a grid with `-m`.

`run(cfg, run_dir)` is the whole experiment as a plain function: build the model, tie, init,
then one explicit loop (forward, loss, backward, capture gradients, step) with a snapshot at
epoch 0 and at every `snapshot.every`-th epoch. `main()` is the thin Hydra entry point.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig

from . import __version__
from .config import UserError, check_schema, plain_config, register_configs, validate
from .paths import register_resolvers

register_resolvers()
register_configs()


class Diverged(Exception):
    pass


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is available here; use device=auto or device=cpu")
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


def make_optimizer(cfg, params):
    from .optim import SGD, Adam

    o = cfg.optim
    if o.name == "sgd":
        return SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return Adam(params, lr=o.lr, weight_decay=o.weight_decay)


_DATA_CACHE: dict = {}


def load_data(cfg, device):
    """The dataset as tensors on `device`; kept for later runs in the same process (sweeps)."""
    from . import data

    key = (str(Path(cfg.data.root).resolve()), cfg.data.limit, str(device))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = data.load(cfg.data.root, cfg.data.limit, device)
    return _DATA_CACHE[key]


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def run(cfg: DictConfig, run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Train one run into `run_dir`; returns the final run.json content."""
    return train(cfg, run_dir, overrides)[0]


def train(cfg: DictConfig, run_dir: str | os.PathLike, overrides: Sequence[str] = ()):
    """`run()`, returning (run.json content, trained model).

    User mistakes raise UserError before anything is written. A diverged run ends with status
    `diverged`; any other exception during training is recorded as `failed` and re-raised."""
    import torch
    import torch.nn.functional as F

    from .recorder import Recorder

    start = time.perf_counter()
    check_schema(cfg)
    validate(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    dataset = load_data(cfg, device)
    model, tie_map = build(cfg)
    model.to(device)
    optimizer = make_optimizer(cfg, model.parameters())

    run_dir = Path(run_dir)
    info = start_run_dir(cfg, run_dir, overrides, tie_map, device)
    json_path = run_dir / "run.json"

    n_act = min(cfg.snapshot.activation_batch, int(dataset.test_y.shape[0]))
    recorder = Recorder(model, tie_map, cfg.snapshot, run_dir, dataset.test_x[:n_act]) \
        if cfg.snapshot.enabled else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    x_all, y_all, n = dataset.train_x, dataset.train_y, dataset.n_train
    bs, epochs, every = int(cfg.data.batch_size), int(cfg.trainer.epochs), int(cfg.snapshot.every)
    totals = EpochTotals(device, float(cfg.trainer.diverge_factor), per_step=checks_loss_per_step(device))

    def train_step(idx):
        """One optimizer step on the examples `idx`; nothing here reads back to the host on a GPU."""
        x, y = x_all[idx], y_all[idx]                     # (B, 1, 28, 28), (B,)
        logits = model(x)                                  # (B, 10)
        loss = F.cross_entropy(logits, y)
        totals.add(loss, logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recorder:
            recorder.accumulate()                          # grads captured before the step
        optimizer.step()

    step_fn = train_step
    if cfg.trainer.compile and device.type == "cuda":
        step_fn = CudaGraphStep(train_step, bs, device)
    elif cfg.trainer.compile:
        print("paramlab: trainer.compile applies to CUDA only; training eagerly on the CPU", file=sys.stderr)

    from tqdm import tqdm

    bar = tqdm(range(1, epochs + 1), desc=run_dir.name[:40], unit="epoch", leave=False,
               disable=None if cfg.trainer.progress else True, file=sys.stderr)
    try:
        if recorder:
            recorder.snapshot(0, with_grads=False)
        for epoch in bar:
            t_epoch = time.perf_counter()
            model.train()
            if recorder:
                recorder.reset()
            totals.reset()
            perm = torch.randperm(n, device=device, generator=generator)
            for step, i in enumerate(range(0, n, bs)):
                step_fn(perm[i:i + bs])
                totals.check(epoch, step)                  # CPU: stops at the first bad loss
            loss_sum, correct = totals.finish(epoch)       # GPU: the epoch's one sync
            train_loss, train_acc = loss_sum / n, correct / n
            val_loss, val_acc = evaluate(model, dataset.test_x, dataset.test_y, int(cfg.data.eval_batch_size))
            if recorder and (epoch % every == 0 or epoch == epochs):
                recorder.snapshot(epoch, with_grads=True, steps=math.ceil(n / bs))
            end_epoch(info, run_dir, epoch, (train_loss, train_acc, val_loss, val_acc), t_epoch, start)
            bar.set_postfix(loss=f"{train_loss:.4f}", val_acc=f"{val_acc:.4f}")
        info["status"] = "completed"
    except Diverged as e:
        info["status"] = "diverged"
        info["diverged"] = {"epoch": info["epochs_completed"] + 1, "detail": str(e)}
        info["error"] = f"diverged at {e}"
    except BaseException as e:
        info["status"] = "failed"
        info["error"] = one_line(e)
        _finish(info, json_path, start)
        raise
    finally:
        bar.close()
        if recorder:
            recorder.close()
    _finish(info, json_path, start)
    return info, model


class EpochTotals:
    """An epoch's train-loss sum, correct count and divergence check.

    On the CPU the loss is read every step (free there), so a diverging run stops at the first
    bad step. On a GPU everything stays on the device, so the step needs no host sync (and can
    be captured as a CUDA graph); the sums and the divergence flag are read once per epoch.
    Divergence: a loss that is non-finite or above `factor` x the first step's loss."""

    def __init__(self, device, factor: float, per_step: bool):
        import torch

        self.factor, self.per_step = factor, per_step
        self.limit = None                      # float (CPU) or 0-d tensor (GPU), set by step 1
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.host_loss_sum = 0.0
        self.last = None

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.bad.zero_()
        self.host_loss_sum = 0.0

    def add(self, loss, logits, y) -> None:
        self.correct += (logits.argmax(1) == y).sum()
        if self.per_step:
            self.last = loss.item()
            if self.limit is None:
                self.limit = self.last * self.factor
            self.host_loss_sum += self.last * y.shape[0]
        else:
            if self.limit is None:
                self.limit = loss.detach() * self.factor
            self.bad |= ~(loss.detach() <= self.limit)     # `not <=` also catches NaN
            self.loss_sum += loss.detach().double() * y.shape[0]

    def check(self, epoch: int, step: int) -> None:
        if self.per_step and not self.last <= self.limit:
            raise Diverged(f"epoch {epoch} step {step}: loss {self.last:.4g}")

    def finish(self, epoch: int):
        if bool(self.bad):
            raise Diverged(f"epoch {epoch}: a step's loss was non-finite or above {self.factor:g}x the first "
                           "step's loss")
        total = self.host_loss_sum if self.per_step else float(self.loss_sum)
        return total, int(self.correct)


class CudaGraphStep:
    """`trainer.compile=true` on CUDA: the whole training step (gather, forward, loss, backward,
    gradient capture, optimizer step) recorded once as a CUDA graph and replayed per batch, so a
    small model is not bound by kernel launches. Only the batch indices are copied in; a last
    partial batch runs eagerly. The first steps run eagerly on a side stream (warm-up), as
    graph capture requires."""

    WARMUP = 3

    def __init__(self, step, batch_size: int, device):
        import torch

        self.step, self.graph, self.warm = step, None, 0
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)

    def __call__(self, idx) -> None:
        import torch

        if idx.shape[0] != self.idx.shape[0]:
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
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(self.idx)
            self.graph.replay()  # capturing does not run the step
        else:
            self.idx.copy_(idx)
            self.graph.replay()


def checks_loss_per_step(device) -> bool:
    """On the CPU a loss value per step is free; on a GPU it would sync the host every step,
    so there the loss is checked on the device and read once per epoch."""
    return device.type == "cpu"


def start_run_dir(cfg, run_dir: Path, overrides, tie_map, device) -> dict:
    """Create the run directory (clearing tables of an earlier attempt) and its first run.json."""
    import torch

    from . import snapshot

    run_dir.mkdir(parents=True, exist_ok=True)
    snapshot.clear_tables(run_dir)  # a run restarted into its old directory starts clean
    info = {
        "paramlab_version": __version__, "run_id": run_dir.name, "status": "running",
        "config": plain_config(cfg), "overrides": list(overrides),
        "epochs": int(cfg.trainer.epochs), "epochs_completed": 0,
        "params": {"unique": tie_map.unique, "total": tie_map.total},
        "tie_groups": tie_map.tie_groups(), "final": None, "wall_time_s": None, "epoch_times_s": [],
        "device": str(device), "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        "pid": os.getpid(), "started_at": _now(), "finished_at": None, "error": None, "diverged": None,
    }
    snapshot.write_json(run_dir / "run.json", info)
    return info


def end_epoch(info: dict, run_dir: Path, epoch: int, metrics, t_epoch: float, start: float) -> None:
    """Write the epoch's metrics file, then run.json (so run.json never claims an unwritten epoch)."""
    from . import snapshot

    train_loss, train_acc, val_loss, val_acc = metrics
    snapshot.write_table(run_dir, "metrics", epoch, {
        "epoch": [epoch] * 4, "split": ["train", "train", "val", "val"],
        "metric": ["loss", "acc", "loss", "acc"], "value": [train_loss, train_acc, val_loss, val_acc]})
    info["epochs_completed"] = epoch
    info["final"] = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}
    info["epoch_times_s"].append(round(time.perf_counter() - t_epoch, 6))
    info["wall_time_s"] = round(time.perf_counter() - start, 3)
    snapshot.write_json(run_dir / "run.json", info)


def _finish(info: dict, json_path: Path, start: float) -> None:
    info["wall_time_s"] = round(time.perf_counter() - start, 3)
    info["finished_at"] = _now()
    try:
        from . import snapshot

        snapshot.write_json(json_path, info)
    except OSError:
        pass  # disk full / read-only: the previous run.json stays valid


def one_line(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    if isinstance(e, OSError) and e.strerror:
        where = f" ({e.filename})" if e.filename else ""
        return f"{type(e).__name__}: {e.strerror}{where}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def evaluate(model, x, y, batch_size: int):
    """Mean cross-entropy and accuracy on (x, y), in large no-grad batches."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size])
            yy = y[i:i + batch_size]
            loss_sum += F.cross_entropy(logits, yy, reduction="sum").double()
            correct += (logits.argmax(1) == yy).sum()
    model.train()
    n = x.shape[0]
    return float(loss_sum) / n, int(correct) / n


def outcome_line(info: dict, label: str, sweep_dir: Optional[Path] = None) -> str:
    """`paramlab: completed <overrides>: val_acc=..., 10/10 epochs, 3.1 s [k/N done]`."""
    from .sweep import progress

    final = info.get("final") or {}
    acc = f"val_acc={final['val_acc']:.4f}" if final else "no completed epoch"
    done = f" [{progress(sweep_dir)}]" if sweep_dir is not None else ""
    return (f"paramlab: {info['status']} {label}: {acc}, {info['epochs_completed']}/{info['epochs']} epochs, "
            f"{info['wall_time_s']:.1f} s{done}")


def _task(cfg: DictConfig) -> Optional[dict]:
    """The Hydra task: one run in Hydra's output directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .sweep import completed_with_same_config, job_threads

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    label = ",".join(overrides) or "(defaults)"
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and completed_with_same_config(run_dir, plain_config(cfg)):
        print(f"paramlab: skip {label}: already completed in {run_dir}", flush=True)
        return None
    threads = job_threads(hc)
    if threads:
        import torch

        torch.set_num_threads(threads)
    print(f"paramlab: start {label} -> {run_dir}", flush=True)
    try:
        info = run(cfg, run_dir, overrides)
    except UserError as e:
        print(f"paramlab: error: {e}", file=sys.stderr, flush=True)
        if multirun:
            return None
        sys.exit(2)
    except Exception as e:
        print(f"paramlab: failed {label}: {one_line(e)}", file=sys.stderr, flush=True)
        if multirun:
            return None
        sys.exit(1)
    print(outcome_line(info, label, run_dir.parent if multirun else None), flush=True)
    if info["status"] != "completed" and not multirun:
        print(f"paramlab: run {info['status']}: {info['error']}", file=sys.stderr, flush=True)
    return info


def main() -> None:
    import hydra

    from .cli import guard
    from .sweep import prewarm_joblib_workers, sweep_exit_code

    warming = []
    guard("train", on_expanded=lambda: warming.append(prewarm_joblib_workers(sys.argv[1:])))
    for thread in filter(None, warming):
        thread.join()
    from .cli import CONF_DIR

    # An absolute path: works for `python -m`, console scripts and `python -c` alike.
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(_task)()
    sys.exit(sweep_exit_code())


if __name__ == "__main__":
    main()
