"""Ensemble mode: the jobs of a grid that differ only in learning rate, momentum, weight decay,
dropout, init or seed, trained at once as one batched model (`hydra/launcher=ensemble`).

K members of an MLP are stacked: every parameter becomes one (K, ...) tensor and every Linear
call one `baddbmm`, so a step costs about one small model's launches instead of K. Each member
keeps what a separate run would have: its own init (built with its seed exactly as `run()`
builds it), its own batch order (its seeded generator), its own dropout masks (a generator
continuing its global RNG stream), its own SGD hyperparameters, divergence check, per-call-site
gradients, and its own run directory with the same run.json and Parquet tables. Results equal
separate runs up to float rounding (bmm vs mm); tests check that.

Members must share everything else (model=mlp, widths, activation, sharing, data, batch size,
epochs, snapshot settings, optim=sgd); the launcher groups jobs accordingly and runs any job that
fits no group on its own.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import dropout_list, plain_config, without_hydra
from .recorder import write_activation_stats, write_param_snapshot
from .sharing import _SiteTap
from .train import (Diverged, _finish, build, end_epoch, load_data, one_line, outcome_line, resolve_device,
                    start_run_dir)

# Config keys that may differ between the members of one ensemble.
MEMBER_KEYS = ("optim.lr", "optim.momentum", "optim.weight_decay", "model.dropout", "seed", "init")
_ACT = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid}


def group_key(plain: dict) -> str:
    """Jobs whose configs are equal but for MEMBER_KEYS can share one ensemble."""
    import json

    c = json.loads(json.dumps(plain))
    for key in MEMBER_KEYS + ("sweep", "trainer.progress"):
        node, *rest = key.split(".")
        (c[node] if rest else c).pop(rest[0] if rest else node, None)
    return json.dumps(c, sort_keys=True)


def can_ensemble(cfg) -> bool:
    return cfg.model.name == "mlp" and cfg.optim.name == "sgd"


class Members:
    """K stacked MLPs (the same layout and ties), built member by member as run() builds one."""

    def __init__(self, cfgs: Sequence, device):
        self.cfgs = list(cfgs)
        self.k = len(cfgs)
        models, self.dropout_generators = [], []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)
            model, tie_map = build(cfg)
            models.append(model)
            g = torch.Generator()                      # continues this member's global RNG stream,
            g.set_state(torch.get_rng_state())         # which a separate run's dropout would draw from
            self.dropout_generators.append(g)
        self.template, self.tie_map = models[0], tie_map
        named = [dict(m.named_parameters()) for m in models]
        # One (K, ...) leaf per unique parameter, in canonical order.
        self.params = [torch.stack([n[p.canonical].detach() for n in named]).to(device).requires_grad_()
                       for p in tie_map.params]
        self.by_name = {p.canonical: t for p, t in zip(tie_map.params, self.params)}
        alias_to_canonical = {a: p.canonical for p in tie_map.params for a in p.aliases}
        self.layers = []                               # (path, weight name, bias name) in forward order
        for path in list(self.template.hidden_linears) + [self.template.head]:
            self.layers.append((path, alias_to_canonical[f"{path}.weight"], alias_to_canonical[f"{path}.bias"]))
        self.tied = {p.canonical for p in tie_map.params if p.tied}
        self.site_sums = {(p.canonical, site): torch.zeros_like(self.by_name[p.canonical])
                          for p in tie_map.params if p.tied for site in p.call_sites}
        self.grad_sums = [torch.zeros_like(p) for p in self.params]
        # Per-member hyperparameters, shaped to broadcast over (K, ...) tensors.
        self.lr = torch.tensor([float(c.optim.lr) for c in cfgs], device=device)
        self.momentum = torch.tensor([float(c.optim.momentum) for c in cfgs], device=device)
        self.weight_decay = torch.tensor([float(c.optim.weight_decay) for c in cfgs], device=device)
        self.buffers = None
        self.activation = _ACT[cfgs[0].model.activation]
        self.drop_host = [dropout_list(c.model) for c in cfgs]                     # K x hidden layers
        self.cuda_generators: Dict[int, torch.Generator] = {}
        # Members with the same seed draw the same batches: gather those inputs once per seed.
        seeds = sorted({int(c.seed) for c in cfgs})
        self.seeds = seeds
        self.seed_groups = [torch.tensor([k for k, c in enumerate(cfgs) if int(c.seed) == s], device=device)
                            for s in seeds]
        concat = torch.cat(self.seed_groups)
        self.group_order = torch.argsort(concat)     # rows of the concatenated groups -> member order
        self.member_group = torch.tensor([seeds.index(int(c.seed)) for c in cfgs], device=device)

    def forward(self, xs: Sequence[torch.Tensor], train: bool, capture: List | None = None) -> torch.Tensor:
        """xs[g]: the (B, 784) inputs of the members in seed group g (members with one seed see the same
        batches) -> logits (K, B, 10). The first layer is one matmul per group against all its members'
        weights side by side; the later layers one baddbmm over the members."""
        n_hidden = len(self.layers) - 1
        h = None
        for j, (path, w_name, b_name) in enumerate(self.layers):
            w, b = self.by_name[w_name], self.by_name[b_name]
            if torch.is_grad_enabled() and w_name in self.tied:
                w, b = _SiteTap.apply((self.site_sums[(w_name, path)], self.site_sums[(b_name, path)]), w, b)
            if h is None:
                out = w.shape[1]
                parts = []
                for x, members in zip(xs, self.seed_groups):
                    wg = w[members].reshape(-1, w.shape[2])                  # (|g| * out, 784)
                    hg = (x @ wg.t()).view(x.shape[0], len(members), out)    # (B, |g|, out)
                    parts.append(hg.transpose(0, 1))
                h = parts[0] if len(parts) == 1 else torch.cat(parts)[self.group_order]
                h = h + b.unsqueeze(1)                                        # (K, B, out)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))      # (K, B, out)
            if j == n_hidden:
                return h
            h = self.activation(h)
            if capture is not None:
                capture.append(h)
            if train:
                h = h * self._dropout_mask(j, h)

    def _dropout_mask(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Each member's inverted-dropout mask. On the CPU it is drawn exactly as F.dropout draws it in a
        separate run (same generator state, same op), so results match; on a GPU each member draws
        from its own CUDA generator on the device (F.dropout's fused CUDA kernel draws differently)."""
        masks = []
        for k in range(self.k):
            p = self.drop_host[k][layer]
            if p == 0.0:                               # F.dropout draws nothing for p = 0
                masks.append(torch.ones(h.shape[1:], device=h.device))
                continue
            if h.is_cuda:
                if k not in self.cuda_generators:
                    self.cuda_generators[k] = torch.Generator(device=h.device).manual_seed(int(self.cfgs[k].seed))
                m = torch.empty(h.shape[1:], device=h.device).bernoulli_(1 - p, generator=self.cuda_generators[k])
            else:
                m = torch.empty(h.shape[1:]).bernoulli_(1 - p, generator=self.dropout_generators[k])
            masks.append(m.div_(1 - p))
        return torch.stack(masks)

    @torch.no_grad()
    def sgd_step(self, alive: torch.Tensor) -> None:
        """torch.optim.SGD's update, with each member's lr / momentum / weight decay (0 lr once diverged)."""
        def per_member(v, t):
            return v.view(-1, *([1] * (t.dim() - 1)))

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        grads = [g + per_member(self.weight_decay, p) * p for g, p in zip(grads, self.params)]
        if self.buffers is None:
            self.buffers = [g.clone() for g in grads]
        else:
            for buf, g in zip(self.buffers, grads):
                buf.mul_(per_member(self.momentum, buf)).add_(g)
        use_buffer = self.momentum > 0
        lr = self.lr * alive
        for p, g, buf in zip(self.params, grads, self.buffers):
            step = torch.where(per_member(use_buffer, p), buf, g)
            p.sub_(per_member(lr, p) * step)

    def member_values(self, k: int):
        return [p[k] for p in self.params]


def _evaluate(members: Members, x, y, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-member mean loss and accuracy on (x, y): (K,), (K,)."""
    loss_sum = torch.zeros(members.k, dtype=torch.float64, device=x.device)
    correct = torch.zeros(members.k, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].flatten(1), y[i:i + batch_size]
            logits = members.forward([xb] * len(members.seeds), train=False)  # (K, B, 10)
            ce = F.cross_entropy(logits.transpose(1, 2), yb.expand(members.k, -1), reduction="none")
            loss_sum += ce.double().sum(1)
            correct += (logits.argmax(2) == yb).sum(1)
    return loss_sum / x.shape[0], correct.double() / x.shape[0]


def run_ensemble(cfgs: Sequence, run_dirs: Sequence[Path], overrides: Sequence[Sequence[str]],
                 log=print) -> List[dict]:
    """Train the members together; write each member's run directory. Returns their run.json."""
    start = time.perf_counter()
    cfg0 = cfgs[0]
    device = resolve_device(cfg0.device)
    dataset = load_data(cfg0, device)
    members = Members(cfgs, device)
    k = members.k
    infos = [start_run_dir(c, Path(d), o, members.tie_map, device) for c, d, o in zip(cfgs, run_dirs, overrides)]
    for info in infos:
        info["ensemble"] = {"size": k, "members": [Path(d).name for d in run_dirs]}
    snap = cfg0.snapshot
    n_act = min(snap.activation_batch, int(dataset.test_y.shape[0]))
    act_x = [dataset.test_x[:n_act].flatten(1)] * len(members.seeds)
    layers = list(members.template.hidden_outputs)
    generators = [torch.Generator(device=device).manual_seed(s) for s in members.seeds]  # one per seed
    x_all, y_all, n = dataset.train_x.flatten(1), dataset.train_y, dataset.n_train
    bs, epochs, every = int(cfg0.data.batch_size), int(cfg0.trainer.epochs), int(cfg0.snapshot.every)
    factor = float(cfg0.trainer.diverge_factor)
    alive = torch.ones(k, device=device)
    limits = None
    status = ["running"] * k

    def snapshot_members(epoch: int, steps: int) -> None:
        capture: List[torch.Tensor] = []
        with torch.no_grad():
            members.forward(act_x, train=False, capture=capture)
        for m in range(k):
            if status[m] != "running":
                continue
            grads = sites = None
            if steps:
                grads = [g[m] / steps for g in members.grad_sums]
                sites = {key: s[m] / steps for key, s in members.site_sums.items()}
            write_param_snapshot(Path(run_dirs[m]), epoch, snap, members.tie_map, members.member_values(m),
                                 grads, sites)
            write_activation_stats(Path(run_dirs[m]), epoch, layers, [c[m] for c in capture])

    try:
        if snap.enabled:
            snapshot_members(0, 0)
        for epoch in range(1, epochs + 1):
            t_epoch = time.perf_counter()
            for t in members.grad_sums + list(members.site_sums.values()):
                t.zero_()
            loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
            correct = torch.zeros(k, dtype=torch.int64, device=device)
            perms = torch.stack([torch.randperm(n, device=device, generator=g) for g in generators])  # (S, n)
            for step, i in enumerate(range(0, n, bs)):
                idx = perms[:, i:i + bs]                                   # (S, B): one batch per seed
                xs = list(x_all[idx])                                      # S x (B, 784)
                y = y_all[idx][members.member_group]                       # (K, B)
                logits = members.forward(xs, train=True)                   # (K, B, 10)
                losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)  # (K,)
                values = losses.tolist()
                if limits is None:
                    limits = [v * factor for v in values]
                for m, v in enumerate(values):
                    if status[m] == "running" and not v <= limits[m]:
                        status[m] = "diverged"
                        alive[m] = 0.0
                        infos[m]["diverged"] = {"epoch": epoch, "detail": f"epoch {epoch} step {step}: loss {v:.4g}"}
                        infos[m]["error"] = f"diverged at epoch {epoch} step {step}: loss {v:.4g}"
                        log(f"paramlab: ensemble member {Path(run_dirs[m]).name} diverged at epoch {epoch}")
                if not any(s == "running" for s in status):
                    raise Diverged("every member diverged")
                for p in members.params:
                    p.grad = None
                torch.where(alive > 0, losses, torch.zeros_like(losses)).sum().backward()
                if snap.enabled:
                    torch._foreach_add_(members.grad_sums, [p.grad for p in members.params])
                members.sgd_step(alive)
                loss_sum += losses.detach().double() * y.shape[1]
                correct += (logits.argmax(2) == y).sum(1)
            val_loss, val_acc = _evaluate(members, dataset.test_x, dataset.test_y, int(cfg0.data.eval_batch_size))
            if snap.enabled and (epoch % every == 0 or epoch == epochs):
                snapshot_members(epoch, math.ceil(n / bs))
            train_loss, train_acc = (loss_sum / n).tolist(), (correct.double() / n).tolist()
            val_loss, val_acc = val_loss.tolist(), val_acc.tolist()
            for m in range(k):
                if status[m] == "running":
                    end_epoch(infos[m], Path(run_dirs[m]), epoch,
                              (train_loss[m], train_acc[m], val_loss[m], val_acc[m]), t_epoch, start)
        for m in range(k):
            if status[m] == "running":
                status[m] = "completed"
    except Diverged:
        pass
    except BaseException as e:
        for m in range(k):
            if status[m] == "running":
                infos[m]["status"], infos[m]["error"] = "failed", one_line(e)
                _finish(infos[m], Path(run_dirs[m]) / "run.json", start)
        raise
    for m in range(k):
        infos[m]["status"] = status[m] if status[m] != "running" else "diverged"
        _finish(infos[m], Path(run_dirs[m]) / "run.json", start)
    return infos


def run_jobs(jobs: Sequence[Tuple[List[str], "object", Path]], max_members: int, run_alone) -> List[dict]:
    """The ensemble launcher's work: skip completed jobs, group the rest, train each group as
    one batched model; a job that fits no group goes to `run_alone(index)` (Hydra's own run_job)."""
    from .sweep import completed_with_same_config

    results: List[dict | None] = [None] * len(jobs)
    groups: Dict[str, List[int]] = {}
    for i, (overrides, cfg, run_dir) in enumerate(jobs):
        label = ",".join(overrides) or "(defaults)"
        plain = plain_config(cfg)
        if completed_with_same_config(run_dir, plain):
            print(f"paramlab: skip {label}: already completed in {run_dir}", flush=True)
            continue
        key = group_key(plain) if can_ensemble(cfg) else f"alone-{i}"
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        for chunk in (members[j:j + max_members] for j in range(0, len(members), max_members)):
            if len(chunk) == 1:
                results[chunk[0]] = run_alone(chunk[0])
                continue
            cfgs = [without_hydra(jobs[i][1]) for i in chunk]
            names = ", ".join(",".join(jobs[i][0]) for i in chunk)
            print(f"paramlab: ensemble of {len(chunk)}: {names}", flush=True)
            try:
                infos = run_ensemble(cfgs, [jobs[i][2] for i in chunk], [jobs[i][0] for i in chunk])
            except Exception as e:  # recorded as failed in each member's run.json
                print(f"paramlab: ensemble failed: {one_line(e)}", flush=True)
                continue
            for i, info in zip(chunk, infos):
                results[i] = info
                print(outcome_line(info, ",".join(jobs[i][0]), jobs[i][2].parent), flush=True)
    return results

