"""The models: plain nn.Modules whose shapes are all known from the config (no lazy layers),
so tying and initialization see real tensors. All map (B, 1, 28, 28) images to (B, 10) logits.

Each built-in model tells the rest of paramlab two things about its layout:
- `hidden_layers`: module paths of its hidden layers with weights (Linear, or Conv2d for
  model=cnn), in forward order: what `sharing=all_hidden` ties (layers 2..n);
- `hidden_outputs`: module paths whose outputs are the hidden activations (activation stats).
A user's model (model=custom) may define either; without `hidden_outputs`, the outputs of its
activation modules (ReLU, Tanh, GELU, ...) count as its hidden activations (`activation_paths`).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections import OrderedDict
from typing import List, Sequence

import torch
from torch import nn

from .config import UserError, dropout_list, model_kwargs, one_line

IN_FEATURES = 28 * 28
N_CLASSES = 10
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
# Module types whose outputs count as hidden activations of a model that does not name its own.
ACTIVATION_TYPES = (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                    nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.PReLU, nn.Hardswish, nn.Hardsigmoid)


class MLP(nn.Module):
    """The seed's PlotParameterMLP without the tying: Flatten, then (Linear, act, Dropout) per
    hidden width, then a Linear head. With hidden [8,8,8] the Linear layers sit at net.1,
    net.4, net.7 and the head at net.10."""

    layout_free = True      # forward hands activations on unviewed (runner.batched.layout_free)

    def __init__(self, hidden: Sequence[int], dropout: Sequence[float], activation: str = "relu"):
        super().__init__()
        layers: List[nn.Module] = [nn.Flatten()]
        width = IN_FEATURES
        for h, p in zip(hidden, dropout):
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation](), nn.Dropout(p)]
            width = h
        layers.append(nn.Linear(width, N_CLASSES))
        self.net = nn.Sequential(*layers)
        self.hidden_layers = [f"net.{1 + 3 * i}" for i in range(len(hidden))]
        self.hidden_outputs = [f"net.{2 + 3 * i}" for i in range(len(hidden))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28) -> (B, 10)
        return self.net(x)


class NestMLP(nn.Module):
    """The seed's NestMLP: `net` = Linear 64, ReLU, Linear 32, ReLU; `linear` to the classes.
    `model.net.named_parameters()` gives 0.weight, 0.bias, 2.weight, 2.bias as in the seed."""

    layout_free = True      # forward hands activations on unviewed (runner.batched.layout_free)

    def __init__(self, hidden: Sequence[int] = (64, 32), activation: str = "relu"):
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.net = nn.Sequential(nn.Linear(IN_FEATURES, hidden[0]), act(),
                                 nn.Linear(hidden[0], hidden[1]), act())
        self.linear = nn.Linear(hidden[1], N_CLASSES)
        self.hidden_layers = ["net.0", "net.2"]
        self.hidden_outputs = ["net.1", "net.3"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.net(x.flatten(1)))


class RGNet(nn.Module):
    """The seed's nested blocks: `block2` holds one `block1` (Linear + act) per hidden width
    (the seed's four blocks of width 4 by default), then `head_linear` to the classes.
    Parameter names nest: block2.0.0.weight is block 0's Linear weight."""

    layout_free = True      # forward hands activations on unviewed (runner.batched.layout_free)

    def __init__(self, hidden: Sequence[int] = (4, 4, 4, 4), activation: str = "relu"):
        super().__init__()
        blocks = []
        width = IN_FEATURES
        for h in hidden:
            blocks.append(nn.Sequential(nn.Linear(width, h), _ACTIVATIONS[activation]()))
            width = h
        self.block2 = nn.Sequential(*blocks)
        self.head_linear = nn.Linear(width, N_CLASSES)
        self.hidden_layers = [f"block2.{i}.0" for i in range(len(hidden))]
        self.hidden_outputs = [f"block2.{i}.1" for i in range(len(hidden))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_linear(self.block2(x.flatten(1)))


class LeNet(nn.Module):
    """d2l's LeNet-5 for 28x28x1 images (61,706 parameters), in d2l's own `net` Sequential:
    net.0 Conv2d(1,6,5,padding=2), act, AvgPool2d(2), net.3 Conv2d(6,16,5), act, AvgPool2d(2),
    Flatten, net.7 Linear(400,120), act, net.9 Linear(120,84), act, net.11 Linear(84,10)."""

    def __init__(self, activation: str = "sigmoid"):
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), act(), nn.AvgPool2d(kernel_size=2, stride=2),  # (B,6,14,14)
            nn.Conv2d(6, 16, kernel_size=5), act(), nn.AvgPool2d(kernel_size=2, stride=2),            # (B,16,5,5)
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), act(),
            nn.Linear(120, 84), act(),
            nn.Linear(84, N_CLASSES))
        self.hidden_layers = ["net.0", "net.3", "net.7", "net.9"]
        self.hidden_outputs = ["net.1", "net.4", "net.8", "net.10"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Sequential):
    """A small CNN with named layers (so `sharing.groups=[[conv2,conv3]]` or `conv2.weight` read
    naturally): conv1 = Conv2d(1,c1,3,padding=1), act1, pool1 = MaxPool2d(2), then per further
    width conv_i = Conv2d(c_{i-1},c_i,3,padding=1), act_i, drop_i = Dropout2d(p) (identity at
    p = 0, kept so layer paths never depend on the dropout rate); global average pool; head =
    Linear(c_n, 10). [16,16,16]: 4970 parameters; conv2..conv_n tied: 2650 unique."""

    def __init__(self, channels: Sequence[int], dropout: Sequence[float], activation: str = "relu"):
        act = _ACTIVATIONS[activation]
        layers = [("conv1", nn.Conv2d(1, channels[0], 3, padding=1)), ("act1", act()), ("pool1", nn.MaxPool2d(2))]
        for i in range(1, len(channels)):
            layers += [(f"conv{i + 1}", nn.Conv2d(channels[i - 1], channels[i], 3, padding=1)),
                       (f"act{i + 1}", act()), (f"drop{i + 1}", nn.Dropout2d(dropout[i - 1]))]
        layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                   ("head", nn.Linear(channels[-1], N_CLASSES))]
        super().__init__(OrderedDict(layers))
        self.hidden_layers = [f"conv{i + 1}" for i in range(len(channels))]
        self.hidden_outputs = [f"act{i + 1}" for i in range(len(channels))]


def import_target(target: str):
    """The callable a dotted path names, importable from the current directory (as Hydra users
    expect of `_target_`), or a UserError saying why not."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = str(target).rpartition(".")
    if not module_name:
        raise UserError(f"model._target_={target!r} must be a dotted path PKG.MODULE.NAME, e.g. mymodels.Net")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the user's module failing on import
        raise UserError(f"model._target_={target!r}: cannot import {module_name} ({one_line(e)}); "
                        "run from the folder that holds it or put it on PYTHONPATH") from None
    if not hasattr(module, attr):
        raise UserError(f"model._target_={target!r}: module {module_name} has no attribute {attr!r}")
    return getattr(module, attr)


def build_custom(model_cfg) -> nn.Module:
    target = model_cfg._target_
    factory = import_target(target)
    kwargs = model_kwargs(model_cfg)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise UserError(f"model._target_={target}: {e} (its arguments are the keys under model, e.g. "
                        "++model.width=32)") from None
    except ValueError:
        pass  # no signature to check (a builtin): call it and see
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise UserError(f"model._target_={target}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
                        f"{one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model._target_={target} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def activation_paths(model: nn.Module) -> List[str]:
    """Paths whose outputs are the model's hidden activations: `hidden_outputs` if the model
    names them, else every activation module (each path of a module reused at several)."""
    named = getattr(model, "hidden_outputs", None)
    if named is not None:
        return list(named)
    return [p for p, m in model.named_modules(remove_duplicate=False) if p and isinstance(m, ACTIVATION_TYPES)]


def build_model(model_cfg) -> nn.Module:
    """Build the model the `model` config group names (validated config)."""
    name = model_cfg.name
    if name == "custom":
        return build_custom(model_cfg)
    hidden = [int(h) for h in model_cfg.get("hidden") or ()]
    if name == "mlp":
        return MLP(hidden, dropout_list(model_cfg), model_cfg.activation)
    if name == "nest_mlp":
        return NestMLP(hidden, model_cfg.activation)
    if name == "rgnet":
        return RGNet(hidden, model_cfg.activation)
    if name == "lenet":
        return LeNet(model_cfg.activation)
    if name == "cnn":
        return CNN([int(c) for c in model_cfg.channels], dropout_list(model_cfg), model_cfg.activation)
    raise ValueError(name)  # validate() rejects other names first
