"""Initializers, applied after tying so a tied tensor is initialized once, as one tensor.

They act on *layers*: modules that hold a `weight` of two or more dimensions (Linear, Conv2d,
or a user's module), in `named_modules` order, every path of a reused module included. Every
named init sets a layer's weight as named and its bias to zero; `default` keeps PyTorch's own
initialization. Other parameters (norm layers' 1-d weights, a user's extra tensors) keep theirs.
"""
from __future__ import annotations

import fnmatch
from typing import List, Tuple

import torch
from torch import nn

from .config import UserError


def _init_layer(m: nn.Module, name: str, std: float = 0.01, value: float = 1.0) -> None:
    w = m.weight
    if name == "default":
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        return
    if name == "normal":
        nn.init.normal_(w, mean=0.0, std=std)
    elif name == "constant":
        nn.init.constant_(w, value)
    elif name == "xavier":
        nn.init.xavier_uniform_(w)
    elif name == "kaiming":
        nn.init.kaiming_normal_(w, nonlinearity="relu")
    elif name == "d2l_custom":
        # U(5,10) w.p. 1/4, 0 w.p. 1/2, U(-10,-5) w.p. 1/4: uniform on [-10, 10], then zero |w| < 5.
        nn.init.uniform_(w, -10.0, 10.0)
        w.mul_(w.abs() >= 5)
    else:
        raise ValueError(name)
    bias = getattr(m, "bias", None)
    if isinstance(bias, torch.Tensor):
        nn.init.zeros_(bias)


def weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(path, module) of every layer with a >= 2-d `weight`, aliases of tied modules included."""
    out = []
    for path, m in model.named_modules(remove_duplicate=False):
        w = m._parameters.get("weight")
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            out.append((path, m))
    return out


def _rule_matches(paths: List[str], pattern: str, path: str) -> bool:
    if pattern == "first":
        return path == paths[0]
    if pattern == "last":
        return path == paths[-1]
    return fnmatch.fnmatchcase(path, pattern)


@torch.no_grad()
def initialize(model: nn.Module, init_cfg) -> None:
    """Apply the `init` config to every layer; a tied tensor is initialized once."""
    if init_cfg.name == "default":
        return
    layers = weight_layers(model)
    done = set()
    if init_cfg.name != "per_layer":
        for _, m in layers:
            if id(m.weight) not in done:
                _init_layer(m, init_cfg.name, init_cfg.std, init_cfg.value)
                done.add(id(m.weight))
        return
    rules = list(init_cfg.rules)
    paths = [p for p, _ in layers]
    for k, rule in enumerate(rules):
        if not paths or not any(_rule_matches(paths, rule.module, p) for p in paths):
            raise UserError(f"init.rules[{k}].module={rule.module!r} matches no layer; use first, last, "
                            f"a glob, or one of: {', '.join(paths)}")
    # The first matching rule decides for a layer; layers no rule matches keep PyTorch's init.
    for path, m in layers:
        for rule in rules:
            if _rule_matches(paths, rule.module, path):
                if id(m.weight) not in done:
                    _init_layer(m, rule.init, rule.std, rule.value)
                    done.add(id(m.weight))
                break
