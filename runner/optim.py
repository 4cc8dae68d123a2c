"""SGD and Adam for stacked (K, ...) parameters, each member with its own learning rate,
momentum and weight decay, with torch.optim's update rules (foreach implementation, no
nesterov/amsgrad/maximize; checked against torch.optim in the tests).

Why not torch.optim: it knows one learning rate per parameter group, not per row of a stacked
tensor, and constructing one imports torch's compiler stack (torch._dynamo, ~900 modules,
1.5-3 s of start-up per process, measured). Per-member hyperparameters are (K, 1, ...) views
broadcast inside one foreach op per rule, which gives the same bits as torch.optim's scalar
`alpha`, so a member's update does not depend on the other members.

A member whose `alive` entry is 0 (diverged, failed) gets learning rate 0: frozen.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch


class Optimizer:
    def __init__(self, params: Sequence[torch.Tensor], optim_cfgs: Sequence, device, on_device_step: bool = False):
        self.params: List[torch.Tensor] = list(params)
        # What the updates write: detached aliases of the leaves (same storage and version counter),
        # so a step needs no torch.no_grad() (its decorator cost ~3 us a step, measured).
        self.values: List[torch.Tensor] = [p.detach() for p in self.params]
        self.name = optim_cfgs[0].name
        self.k = len(optim_cfgs)

        def column(key: str) -> torch.Tensor:
            return torch.tensor([float(c.get(key, 0.0)) for c in optim_cfgs], dtype=torch.float32, device=device)

        self.lr = column("lr")
        self.lr_host = [float(c.lr) for c in optim_cfgs]         # as given: torch.optim's double maths
        self.alive_host = [1.0] * self.k
        self.alive = torch.ones(self.k, dtype=torch.float32, device=device)
        self.neg_lr = -self.lr                                   # -(lr * alive), updated in place
        self.weight_decay = column("weight_decay") if any(c.get("weight_decay", 0.0) for c in optim_cfgs) else None
        self.momentum = column("momentum") if self.name == "sgd" and any(c.get("momentum", 0.0) for c in optim_cfgs) \
            else None
        self.buffers: Optional[List[torch.Tensor]] = None        # SGD momentum buffers
        self.beta1, self.beta2, self.eps = 0.9, 0.999, 1e-8
        self.t = 0
        # On a GPU the Adam step count lives on the device, so a step can be a CUDA graph.
        self.on_device_step = on_device_step
        self.t_device = torch.zeros((), dtype=torch.float32, device=device)
        if self.name == "adam":
            self.exp_avg = [torch.zeros_like(p) for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # Views made once: neg_lr is updated in place when a member is frozen.
        self.neg_lr_views = self._per_member(self.neg_lr)
        self.weight_decay_views = self._per_member(self.weight_decay) if self.weight_decay is not None else None
        self.momentum_views = self._per_member(self.momentum) if self.momentum is not None else None

    def _per_member(self, v: torch.Tensor) -> List[torch.Tensor]:
        """(K,) -> one (K, 1, ...) view per parameter, broadcasting over its elements (K = 1: the
        parameters are the member's plain tensors, so (1, ..., 1) of their dimension)."""
        if self.k == 1:
            return [v.view((1,) * p.dim()) if p.dim() else v.view(()) for p in self.params]
        return [v.view(-1, *([1] * (p.dim() - 1))) for p in self.params]

    def _row(self, t: torch.Tensor, k: int) -> torch.Tensor:
        return (t if self.k == 1 else t[k]).clone()

    def freeze(self, member: int) -> None:
        self.alive_host[member] = 0.0
        self.alive[member] = 0.0
        self._update_neg_lr()

    def freeze_where(self, bad: torch.Tensor) -> None:
        """Freeze the members where the (K,) bool tensor `bad` is true, on the device (no host read;
        `alive_host` catches up when the loop reads `alive` at the end of the epoch)."""
        self.alive.mul_((~bad).to(self.alive.dtype))
        self._update_neg_lr()

    def _update_neg_lr(self) -> None:
        torch.mul(self.lr, self.alive, out=self.neg_lr).neg_()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.weight_decay is not None:                        # L2: g + wd * p
            grads = torch._foreach_addcmul(grads, self.values, self.weight_decay_views)
        if self.name == "sgd":
            self._sgd(grads)
        else:
            self._adam(grads)

    def _sgd(self, grads) -> None:
        if self.momentum is not None:
            if self.buffers is None:                             # first step: the buffer is the gradient
                self.buffers = [g.detach().clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum_views)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        if self.k == 1 and not self.on_device_step:              # one member: torch.optim's own call (same bits)
            torch._foreach_add_(self.values, grads, alpha=-self.lr_host[0] * self.alive_host[0])
        else:
            torch._foreach_addcmul_(self.values, grads, self.neg_lr_views)

    def _adam(self, grads) -> None:
        torch._foreach_lerp_(self.exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(self.exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - self.beta2)
        if self.on_device_step:
            self.t_device += 1
            correction1 = 1 - torch.pow(self.beta1, self.t_device)
            sqrt_correction2 = (1 - torch.pow(self.beta2, self.t_device)).sqrt()
            step = self.neg_lr / correction1                     # (K,)
        else:
            self.t += 1
            correction1 = 1 - self.beta1 ** self.t
            sqrt_correction2 = (1 - self.beta2 ** self.t) ** 0.5
            # torch.optim rounds lr / correction once, in double: so do we, per member.
            step = torch.tensor([-(lr / correction1) for lr in self.lr_host], dtype=torch.float32,
                                device=self.lr.device).mul_(self.alive)   # x 1 or 0: exact
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, sqrt_correction2)
        torch._foreach_add_(denom, self.eps)
        ratio = torch._foreach_div(self.exp_avg, denom)
        torch._foreach_addcmul_(self.values, ratio, self._per_member(step))

    # ------------------------------------------------------------------ checkpoints
    def stacked_state(self, host: bool = False) -> Dict[str, object]:
        """Every member's state: (K, ...) tensors, or a single run's own ones (`host`: copied to the
        host, one copy per tensor; else the live tensors). member_state(k, this) takes k's rows."""
        def out(ts):
            return [t.cpu() for t in ts] if host else list(ts)

        state: Dict[str, object] = {"name": self.name, "t": int(self.t_device.item()) if self.on_device_step else self.t}
        if self.buffers is not None:
            state["momentum_buffer"] = out(self.buffers)
        if self.name == "adam":
            state["exp_avg"], state["exp_avg_sq"] = out(self.exp_avg), out(self.exp_avg_sq)
        return state

    def member_state(self, k: int, stacked: Optional[Dict[str, object]] = None) -> Dict[str, object]:
        """Member k's optimizer state (tensors cloned, so saving stores only its rows), from
        `stacked` (stacked_state()'s, taken after the epoch's last step) or the live state."""
        stacked = stacked or self.stacked_state()
        return {key: [self._row(t, k) for t in value] if isinstance(value, list) else value
                for key, value in stacked.items()}

    def load_member_states(self, states: Sequence[dict]) -> None:
        """Restore every member's state (all members continue from the same epoch)."""
        self.t = int(states[0]["t"])
        self.t_device.fill_(self.t)
        with torch.no_grad():
            if "momentum_buffer" in states[0] and self.momentum is not None:
                self.buffers = [torch.stack([s["momentum_buffer"][i] for s in states]).reshape(p.shape).to(p.device)
                                for i, p in enumerate(self.params)]
            if self.name == "adam":
                for i, p in enumerate(self.params):
                    self.exp_avg[i].copy_(torch.stack([s["exp_avg"][i] for s in states]).reshape(p.shape))
                    self.exp_avg_sq[i].copy_(torch.stack([s["exp_avg_sq"][i] for s in states]).reshape(p.shape))
