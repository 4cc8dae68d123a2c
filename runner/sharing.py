"""Parameter tying and tie awareness.

`tie(model, sharing_cfg)` makes the modules each group names hold the *same* Parameter
objects (writing through one alias changes the other: the seed's identity check) and
returns a `TieMap`. The modules themselves stay distinct objects, one per position, so every
call site of a shared tensor is a module path of its own and can be told apart.

`named_parameters()` lists a shared tensor once, under its canonical name (the first path),
and autograd sums every use into its `.grad`. `SiteGradients` splits that sum back into the
part that flowed through each call site: each tied call site reads its weight and bias
through an identity autograd Function whose backward accumulates into per-site buffers. The views do not
change any result, and only tied parameters get them (an untied parameter's single site
*is* its `.grad`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import UserError


@dataclass
class ParamInfo:
    canonical: str                 # name in named_parameters()
    aliases: List[str]             # every name in named_parameters(remove_duplicate=False)
    call_sites: List[str]          # module path of the module that uses it, one per alias
    shape: Tuple[int, ...]
    numel: int

    @property
    def tied(self) -> bool:
        return len(self.aliases) > 1


@dataclass
class TieMap:
    params: List[ParamInfo] = field(default_factory=list)

    @property
    def unique(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def total(self) -> int:
        return sum(p.numel * len(p.aliases) for p in self.params)

    def tie_groups(self) -> List[dict]:
        """The tied parameters, as run.json records them."""
        return [{"canonical": p.canonical, "aliases": p.aliases, "call_sites": p.call_sites,
                 "shape": list(p.shape), "numel": p.numel} for p in self.params if p.tied]

    def by_name(self) -> Dict[str, ParamInfo]:
        return {p.canonical: p for p in self.params}


def build_tie_map(model: nn.Module) -> TieMap:
    """Group every parameter path by the tensor it points to."""
    seen: Dict[int, ParamInfo] = {}
    order: List[ParamInfo] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        site = name.rsplit(".", 1)[0] if "." in name else ""
        info = seen.get(id(p))
        if info is None:
            info = ParamInfo(name, [], [], tuple(p.shape), p.numel())
            seen[id(p)] = info
            order.append(info)
        info.aliases.append(name)
        info.call_sites.append(site)
    return TieMap(order)


def resolve_groups(model: nn.Module, sharing_cfg) -> List[List[str]]:
    """The lists of module paths to tie, from the `sharing` config (validated)."""
    if sharing_cfg.name == "none":
        return []
    if sharing_cfg.name == "all_hidden":
        paths = list(model.hidden_linears)
        widths = [model.get_submodule(p).out_features for p in paths]
        if len(paths) < 3:
            raise UserError(f"sharing=all_hidden ties hidden layers 2..n, so model.hidden needs at least 3 "
                            f"widths; got {widths}")
        if len(set(widths)) != 1:
            raise UserError(f"sharing=all_hidden needs equal hidden widths (it reuses one Linear for layers "
                            f"2..n); got model.hidden={widths}, e.g. use model.hidden=[8,8,8]")
        return [paths[1:]]
    return [list(map(str, g)) for g in sharing_cfg.groups]


def _module(model: nn.Module, path: str) -> nn.Module:
    try:
        if not path:
            raise AttributeError
        return model.get_submodule(path)
    except AttributeError:
        with_params = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
        raise UserError(f"sharing.groups: no module {path!r} in this model; modules with parameters: "
                        + ", ".join(with_params)) from None


def tie(model: nn.Module, sharing_cfg) -> TieMap:
    """Tie the module groups the sharing config names; return the model's TieMap."""
    groups = resolve_groups(model, sharing_cfg)
    used: Dict[str, int] = {}
    for k, group in enumerate(groups):
        if len(group) < 2:
            raise UserError(f"sharing.groups[{k}]={group} names fewer than 2 modules; a tie group needs 2 or more")
        for path in group:
            if path in used:
                raise UserError(f"sharing.groups: module {path!r} appears in more than one group; "
                                "merge those groups into one")
            used[path] = k
        source = _module(model, group[0])
        src_params = dict(source.named_parameters())
        if not src_params:
            raise UserError(f"sharing.groups: module {group[0]!r} has no parameters to share")
        for path in group[1:]:
            target = _module(model, path)
            dst_params = dict(target.named_parameters())
            src_shapes = {n: tuple(p.shape) for n, p in src_params.items()}
            dst_shapes = {n: tuple(p.shape) for n, p in dst_params.items()}
            if src_shapes != dst_shapes:
                raise UserError(f"sharing.groups: cannot tie {group[0]} {_shapes(src_shapes)} with {path} "
                                f"{_shapes(dst_shapes)}: parameter shapes differ")
            for name, p in src_params.items():
                owner, _, leaf = name.rpartition(".")
                setattr(target.get_submodule(owner) if owner else target, leaf, p)
    return build_tie_map(model)


def _shapes(shapes: Dict[str, tuple]) -> str:
    return "(" + ", ".join(f"{n} {list(s)}" for n, s in shapes.items()) + ")"


class SiteGradients:
    """Per-call-site gradient sums for every tied parameter, captured inside autograd.

    `sums[(canonical, site)]` accumulates, over the steps since `reset()`, the gradient that
    flowed through the module call at `site`. For each tied parameter the sites' sums add up
    to the sum of its `.grad` over the same steps.
    """

    def __init__(self, model: nn.Module, tie_map: TieMap):
        self.sums: Dict[Tuple[str, str], torch.Tensor] = {}
        self._restore: List[nn.Module] = []
        taps_by_site: Dict[str, Dict[str, torch.Tensor]] = {}
        params = dict(model.named_parameters())
        for info in tie_map.params:
            if not info.tied:
                continue
            for alias, site in zip(info.aliases, info.call_sites):
                buf = torch.zeros_like(params[info.canonical], memory_format=torch.contiguous_format)
                self.sums[(info.canonical, site)] = buf
                taps_by_site.setdefault(site, {})[alias.rsplit(".", 1)[1]] = buf
        seen_modules = set()
        for site, taps in taps_by_site.items():
            module = model.get_submodule(site)
            if not isinstance(module, nn.Linear):
                raise UserError(f"per-call-site gradients need tied modules to be Linear layers; {site} is "
                                f"{type(module).__name__}")
            if id(module) in seen_modules:  # one module object at two paths: its calls can't be told apart
                raise UserError(f"module {site} is the same object as another tied path; tie by sharing "
                                "parameters (sharing.groups) instead of reusing the module")
            seen_modules.add(id(module))
            module.forward = _tapped_linear_forward(module, taps)
            self._restore.append(module)

    def reset(self) -> None:
        if self.sums:
            torch._foreach_zero_(list(self.sums.values()))

    def remove(self) -> None:
        for module in self._restore:
            del module.forward  # back to the class's forward
        self._restore.clear()


class _SiteTap(torch.autograd.Function):
    """Identity on a call site's parameters; its backward adds the gradient flowing through
    this call into the site's accumulators and passes it on unchanged. One Function per call
    (weight and bias together) costs about half of two tensor hooks."""

    @staticmethod
    def forward(ctx, accumulators, *params):
        ctx.accumulators = accumulators
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    def backward(ctx, *grads):
        for acc, g in zip(ctx.accumulators, grads):
            if acc is not None and g is not None:
                acc.add_(g)
        return (None, *grads)


def _tapped_linear_forward(module: nn.Linear, taps: Dict[str, torch.Tensor]):
    accumulators = (taps.get("weight"), taps.get("bias"))

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight, bias = module.weight, module.bias
        if torch.is_grad_enabled():
            if bias is None:
                (weight,) = _SiteTap.apply(accumulators[:1], weight)
            else:
                weight, bias = _SiteTap.apply(accumulators, weight, bias)
        return F.linear(x, weight, bias)

    return forward
