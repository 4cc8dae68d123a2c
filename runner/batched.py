"""K members of one architecture as one module tree: how paramlab trains an ensemble, and a
single run (K = 1) alike.

Every unique parameter becomes one leaf tensor of shape (K, *shape) (member k's tensor is row
k). The model's own forward code runs unchanged; what changes is its modules:
- a module that owns parameters and whose type paramlab knows (Linear, Conv2d, BatchNorm1d/2d,
  LayerNorm) is replaced by a batched twin: Linear as one bmm over the members (where the
  launches of a small model cost more than its arithmetic), the others as the plain functional
  op once per member (where the arithmetic dominates: a grouped convolution was 3x slower here,
  measured). K = 1 calls the plain ops (F.linear, F.conv2d, ...). Each twin computes a member's
  numbers with the kernels that member would get alone, so on the CPU a member of an ensemble
  equals the same config run alone, bit for bit (tests check metrics and every stored tensor);
- a module of another type that owns parameters (a user's layer) runs under `torch.func.vmap`
  over `functional_call` with the members' rows (slower, and equal to a run alone only up to
  float rounding, but any module works);
- Dropout / Dropout2d draw one mask per member from that member's own generator.

Activations are member-major: (K*B, ...), member k's batch in rows k*B .. (k+1)*B - 1 (in a
layout-free model on the CPU, the rows of a Linear's output are laid out feature-major: memory
(features, K*B), see `layout_free`). The
input may also come *shared*: (G*B, ...) rows for G < K groups of members that see the same
batch (members with one seed, or everyone during evaluation); the first Linear then multiplies
each group's batch with all its members' weights without copying it K times, and other modules
expand it to member-major rows first.

Call sites: each batched module knows its module path(s); while capturing, each call reads its
tied tensors as that site's own leaves (sharing their storage), and `gather_sites()` after the
backward adds each site's gradient to its sum and gives the tensor its total. A module object
reused at several paths (the seed's `shared` layer) has its calls told apart by order: the k-th
call in a forward is attributed to its k-th path.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import UserError, one_line
from .sharing import TieMap


class Members:
    """The stacked parameters, the batched module tree and the per-forward context."""

    def __init__(self, templates: Sequence[nn.Module], tie_map: TieMap, device, dropout_seeds: Sequence[int]):
        self.k = len(templates)
        self.device = torch.device(device)
        self.tie_map = tie_map
        self.names = [p.canonical for p in tie_map.params]
        per_member = [dict(t.named_parameters()) for t in templates]
        stacked = [torch.stack([d[n].detach() for d in per_member]).to(self.device) for n in self.names]
        if self.k == 1:
            # A single run: its leaves are the plain tensors (plain functional ops, no stacking in
            # its autograd graph); `params` are (1, ...) views of them for statistics and checkpoints.
            self.leaves = [t[0].clone().requires_grad_() for t in stacked]
            self.params = [leaf.detach().unsqueeze(0) for leaf in self.leaves]   # share the leaves' storage
        else:
            self.leaves = self.params = [t.requires_grad_() for t in stacked]
        # What the optimizer steps (leaves) and what snapshots record ((K, *shape), canonical order).
        self.leaf_by_name = dict(zip(self.names, self.leaves))
        self.canonical = {a: p.canonical for p in tie_map.params for a in p.aliases}
        self.tied = {p.canonical for p in tie_map.params if p.tied}
        # Per-call-site gradient sums of tied tensors, (K, *shape) each (gather_sites() adds to them).
        self.site_sums = {(p.canonical, site): torch.zeros_like(self.leaf_by_name[p.canonical])
                          for p in tie_map.params if p.tied for site in p.call_sites}
        # While capturing, each call site reads its tied tensors as leaves of its own that share the
        # tensors' storage: autograd leaves that call's gradient in their .grad natively (an identity
        # autograd Function per site, the former way, cost ~15 us a step each: a Python node).
        self.site_leaves = {key: self.leaf_by_name[key[0]].detach().requires_grad_() for key in self.site_sums}
        self.tapped: List[tuple] = []                     # site-leaf keys read since the last gather
        self._gathers: Dict[tuple, tuple] = {}            # read order -> gather plan
        self.capturing = False
        self.probing = False                              # the probe counts every module's calls
        self.buffers: Dict[str, torch.Tensor] = {}   # stacked buffers of batched modules, by first path
        # One CPU generator per member for dropout masks, so a member's masks do not depend on
        # the others (on a GPU one device generator draws all members' masks in one kernel).
        self.dropout_generators = [torch.Generator().manual_seed(int(s)) for s in dropout_seeds]
        self._keeps: Dict[tuple, torch.Tensor] = {}
        self._uniforms: Dict[tuple, tuple] = {}
        # CPU dropout calls of this forward and the last one, as (module, shape, rates): see _mask.
        self._drops: List[tuple] = []
        self._drop_plan: List[tuple] = []
        self._drawn: Optional[tuple] = None
        self._plans: Dict[tuple, tuple] = {}
        self._mixed_members: Optional[List[int]] = None
        self.groups: List[Tuple[int, int]] = [(0, self.k)]
        self.member_group = torch.zeros(self.k, dtype=torch.long, device=self.device)
        # One index tensor per grouping, kept for good: a CUDA graph recorded with one reads it
        # at the same address in every replay (training and evaluation alternate groupings).
        self._member_groups: Dict[tuple, torch.Tensor] = {tuple(self.groups): self.member_group}
        self.batch = 0
        self.input_ptr = 0
        # Floats per example of the widest module output, from member 0's own model (so never
        # from K, and seeing modules a VmapModule hides): what evaluation's chunks follow.
        self.widest = widest_output(templates[0])
        # Linear outputs laid out feature-major on the CPU (BatchedLinear): decided by the model alone
        # (never by K), so that a member and its run alone compute the same products.
        self.feature_major = self.device.type == "cpu" and layout_free(templates[0])
        self.model, self.batched = _batch_modules(self, templates)
        self.reused = [b for b in self.batched if len(b.sites) > 1]
        self.model.to(self.device)

    # ------------------------------------------------------------------ forward context
    def forward(self, x: torch.Tensor, groups: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """x: (G*B, ...) rows, group g's batch in rows g*B..; groups[g] = (first, last + 1) member of
        group g (members of a group are consecutive). Returns (K*B, ...) member-major outputs."""
        self.set_groups(groups)
        self.batch = x.shape[0] // len(self.groups)
        self.input_ptr = x.data_ptr()                     # the data batch: a first Linear reads it (flattened)
        for module in self.reused:                        # call counters of modules at several paths
            module.__dict__["calls"] = 0
        self.new_forward()
        if self.capturing:                                # gather_sites() follows this forward's backward;
            self.tapped.clear()                           # a capture never gathered (a failed step or
            for leaf in self.site_leaves.values():        # CUDA-graph recording) leaves nothing behind
                leaf.grad = None
        return self.to_members(self.model(x))

    def new_forward(self) -> None:
        """A forward begins: the last one's dropout calls become the plan (_mask)."""
        self._drop_plan, self._drops, self._drawn = self._drops, [], None

    def set_groups(self, groups: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """Make `groups` current; returns member_group: (K,) each member's group."""
        if list(groups) != self.groups:
            self.groups = list(groups)
            key = tuple(self.groups)
            if key not in self._member_groups:
                index = [g for g, (s, e) in enumerate(self.groups) for _ in range(s, e)]
                self._member_groups[key] = torch.tensor(index, dtype=torch.long, device=self.device)
            self.member_group = self._member_groups[key]
        return self.member_group

    def shared(self, x: torch.Tensor) -> bool:
        """True when x holds one batch per group of members (G < K), not one per member."""
        return len(self.groups) < self.k and x.shape[0] == len(self.groups) * self.batch

    def to_members(self, x: torch.Tensor) -> torch.Tensor:
        """Shared rows (G*B, ...) -> member-major rows (K*B, ...) (a copy); member rows unchanged."""
        if not self.shared(x):
            return x
        rows = x.reshape(len(self.groups), self.batch, *x.shape[1:])
        if len(self.groups) == 1:
            out = rows.expand(self.k, *rows.shape[1:])
        else:
            out = rows[self.member_group]
        return out.reshape(self.k * self.batch, *x.shape[1:])

    # ------------------------------------------------------------------ parameters of one call
    def plan(self, site: str, canonicals: Sequence[str]) -> tuple:
        """What a call at `site` reads: its tensors, and what it reads instead while capturing (None
        if none of them is tied). Made once per call site."""
        tensors = [self.leaf_by_name[c] for c in canonicals]
        keys = [(c, site) for c in canonicals]
        if not any(key in self.site_leaves for key in keys):
            return tensors, None, ()
        return tensors, [self.site_leaves.get(key, t) for key, t in zip(keys, tensors)], \
            tuple(key for key in keys if key in self.site_leaves)

    def read(self, plan: tuple, stacked: bool = False) -> List[torch.Tensor]:
        """The tensors of a call (`plan`), (K, ...) each (K = 1: the plain tensors, unless
        `stacked`); tied ones as their site's leaves while capturing."""
        tensors, taps, keys = plan
        if taps is not None and self.capturing and torch.is_grad_enabled():
            tensors = taps
            self.tapped.extend(keys)
        if stacked and self.k == 1:
            tensors = [t.unsqueeze(0) for t in tensors]
        return tensors

    def gather_sites(self, sums: Sequence[torch.Tensor] = (), leaves: Sequence[torch.Tensor] = ()) -> List[torch.Tensor]:
        """After a capturing backward: each site's gradient added to its sum, and each tied tensor's
        .grad set to the total of its sites', added in the order autograd adds the uses of one
        tensor (the last call's first: the backward runs calls in reverse), so that capturing
        changes no bit of .grad. A site whose tensors a forward reads twice (one module called
        twice) gets both calls' gradients already added by autograd in its own order.
        `sums`, `leaves`: running sums of other tensors' .grad (the recorder's), added in the same
        foreach call once the totals are set (a call less a step); returns those .grads."""
        order = tuple(self.tapped)
        self.tapped.clear()
        grads: List[torch.Tensor] = []
        site_sums: List[torch.Tensor] = []
        if order:
            plan = self._gathers.get(order)
            if plan is None:
                plan = self._gathers[order] = self._gather_plan(order)
            site_leaves, site_sums, tied, columns, parts = plan
            grads = [t.grad for t in site_leaves]
            for t in site_leaves:
                t.grad = None
            if columns is not None and all(g is not None for g in grads):   # every site used, as many per tensor
                totals = [grads[i] for i in columns[0]]       # last call first
                for column in columns[1:]:
                    totals = torch._foreach_add(totals, [grads[i] for i in column])
            else:                                             # a call whose output the loss did not use
                totals = []
                for idx in parts:
                    total = None
                    for i in idx:
                        if grads[i] is not None:
                            site_sums[i].add_(grads[i])
                            total = grads[i] if total is None else total + grads[i]
                    totals.append(total)
                grads, site_sums = [], []
            for leaf, total in zip(tied, totals):
                leaf.grad = total
        others = [p.grad if p.grad is not None else torch.zeros_like(p) for p in leaves]
        if site_sums or sums:
            torch._foreach_add_([*site_sums, *sums], [*grads, *others])
        return others

    def _gather_plan(self, order: tuple) -> tuple:
        """(site leaves, their sums, the tied leaves, columns of site-leaf indices: the j-th column
        holds each tied leaf's j-th part, last call first (None unless every tied leaf has as many
        parts), each tied leaf's part indices)."""
        keys = list(dict.fromkeys(order))                 # each site leaf once, in first-read order
        last_read = {key: i for i, key in enumerate(order)}
        canonicals = list(dict.fromkeys(c for c, _ in keys))
        parts = [sorted((i for i, k in enumerate(keys) if k[0] == c), key=lambda i: -last_read[keys[i]])
                 for c in canonicals]
        columns = [list(column) for column in zip(*parts)] if len({len(p) for p in parts}) == 1 else None
        return ([self.site_leaves[k] for k in keys], [self.site_sums[k] for k in keys],
                [self.leaf_by_name[c] for c in canonicals], columns, parts)

    def dropout(self, x: torch.Tensor, rates: Sequence[float], channelwise: bool, module=None) -> torch.Tensor:
        """Inverted dropout with member k's rate and generator on its rows of x (member-major);
        `module`: the calling module (what tells a forward's calls apart, see _mask)."""
        k, b = self.k, x.shape[0] // self.k
        shape = (b, x.shape[1], *([1] * (x.dim() - 2))) if channelwise else (b, *x.shape[1:])
        if x.is_cuda:
            keep = self._keep(rates, x.device, len(shape))                   # (K, 1, ...): 1 - p
            mask = torch.bernoulli(keep.expand(k, *shape)).div_(keep)
        else:
            mask = self._mask(module, tuple(shape), tuple(rates))
        return (x.reshape(k, b, *x.shape[1:]) * mask).reshape(x.shape)

    def _mask(self, module, shape: tuple, rates: tuple) -> torch.Tensor:
        """A CPU dropout call's (K, *shape) mask: 1 / (1 - p) where member m's uniform draw is below
        its 1 - p, else 0. Each member draws the uniforms its run alone draws: from its own
        generator, in call order, none where its rate is 0 (those rows stay 0: always kept).

        A forward whose calls begin as the previous forward's did draws them all at its first
        call (one uniform_ per member, and one comparison for every layer, instead of one per
        layer: ~20 us a step less for 9 members and 3 dropout layers, measured): the numbers are
        the same, since a generator's uniforms drawn at once are those drawn a part at a time. A
        call that departs from the plan (a model whose forward calls its dropouts in varying
        order) draws its own after those drawn ahead, as do the rest, alike alone and in an
        ensemble: a member takes part only if its rate is 0 in all of the model's dropout modules
        or in none (`_mixed`), so that it sees the same calls as alone (a module whose rates are all
        0 is not called); the others, and calls from no module, draw call by call."""
        signature = (module, shape)
        i = len(self._drops)
        self._drops.append((module, shape, rates))
        plan = self._drop_plan
        if module is not None and i == 0 and plan and plan[0][:2] == signature:
            masks, rows = self._planned(tuple(plan))
            for row, generator in rows:
                row.uniform_(0.0, 1.0, generator=generator)
            self._drawn = masks()
        if self._drawn is not None:
            if i < len(plan) and plan[i][:2] == signature:
                mask = self._drawn[i]
                mixed = [m for m in self._mixed() if rates[m]]
                if mixed:       # drawn call by call, into their rows of a copy (the calls' masks share
                    mask = mask.clone()               # one tensor, which autograd saved for earlier calls)
                for m in mixed:
                    row = torch.empty(shape).uniform_(0.0, 1.0, generator=self.dropout_generators[m])
                    torch.lt(row, self._keep(rates, self.device, 1)[m, 0], out=mask[m]).mul_(
                        self._keep(rates, self.device, 1, inverse=True)[m, 0])
                return mask
            self._drawn = None                                # departed from the plan
        # The comparison written as floats: a bool result times 1 / (1 - p) gives the same bits
        # ~3x slower (measured: 18.7 -> 6.7 us for 9 x 256 x 8); lt then mul: half bernoulli_'s time.
        uniform, rows = self._uniform_rows(shape, rates)
        for row, generator in rows:
            row.uniform_(0.0, 1.0, generator=generator)
        keep = self._keep(rates, self.device, len(shape))
        mask = torch.lt(uniform, keep, out=torch.empty(uniform.shape, dtype=uniform.dtype))
        return mask.mul_(self._keep(rates, self.device, len(shape), inverse=True))

    def _mixed(self) -> List[int]:
        """Members whose rate is 0 in some of the model's dropout modules and not in others."""
        if self._mixed_members is None:
            rates = [module.rates for module in self.model.modules() if isinstance(module, BatchedDropout)]
            self._mixed_members = [m for m in range(self.k) if len({bool(r[m]) for r in rates}) > 1]
        return self._mixed_members

    def _planned(self, plan: tuple):
        """For a forward's dropout calls [(module, shape, rates)]: (a function that turns the drawn
        uniforms into every call's mask, [(row, generator)]: each member's consecutive uniforms to
        draw; none for `_mixed` members). One (K, total) buffer, call i's uniforms in columns
        offsets[i]..; made once per plan."""
        if plan not in self._plans:
            sizes = [int(torch.Size(shape).numel()) for _, shape, _ in plan]
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            buffer = torch.zeros(self.k, sum(sizes))
            keep = torch.ones(self.k, sum(sizes))
            scale = torch.ones(self.k, sum(sizes))
            rows = []
            for m, generator in enumerate(self.dropout_generators):
                start = None                                  # one draw per run of calls with dropout
                for i, (_, _, rates) in enumerate(plan):
                    keep[m, offsets[i]:offsets[i] + sizes[i]] = 1.0 - rates[m]
                    scale[m, offsets[i]:offsets[i] + sizes[i]] = self._keep(rates, self.device, 1, inverse=True)[m, 0]
                    if m in self._mixed():
                        continue
                    if rates[m] and start is None:
                        start = offsets[i]
                    if not rates[m] and start is not None:
                        rows.append((buffer[m, start:offsets[i]], generator))
                        start = None
                if start is not None:
                    rows.append((buffer[m, start:], generator))
            views = [(offsets[i], sizes[i], shape) for i, (_, shape, _) in enumerate(plan)]

            def masks():
                mask = torch.lt(buffer, keep, out=torch.empty(buffer.shape)).mul_(scale)
                return [mask[:, o:o + n].view(self.k, *shape) for o, n, shape in views]

            self._plans[plan] = masks, rows
        return self._plans[plan]

    def _uniform_rows(self, shape: tuple, rates: Sequence[float]):
        """A (K, *shape) buffer, made once per shape and rates, and (row, generator) for each member
        with dropout (~10 us a layer less than a fresh buffer and a row view per member a step)."""
        key = (shape, tuple(rates))
        if key not in self._uniforms:
            buffer = torch.zeros(self.k, *shape)
            self._uniforms[key] = buffer, [(buffer[m], g) for m, (p, g) in
                                           enumerate(zip(rates, self.dropout_generators)) if p]
        return self._uniforms[key]

    def _keep(self, rates: Sequence[float], device, dims: int, inverse: bool = False) -> torch.Tensor:
        """(K, 1, ...): 1 - p per member, or 1 / (1 - p) (float32, as dividing a kept 1.0 by it gives)."""
        key = (tuple(rates), str(device), dims, inverse)
        if key not in self._keeps:
            keep = torch.tensor([1.0 - p for p in rates], device=device).view(-1, *([1] * dims))
            self._keeps[key] = 1.0 / keep if inverse else keep
        return self._keeps[key]

    def member_view(self, x: torch.Tensor) -> torch.Tensor:
        """(K*B, ...) member-major rows (or shared rows) as (K, B, ...)."""
        x = self.to_members(x)
        return x.reshape(self.k, x.shape[0] // self.k, *x.shape[1:])

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def probe(self, shape=(2, 1, 28, 28)) -> torch.Tensor:
        """One forward on a zero batch in eval mode (no masks drawn, no buffer updated): checks that
        every module batches, counts each module's calls, returns the (K*B, ...) output."""
        was = self.model.training
        self.model.eval()
        self.probing = True
        for module in self.batched:
            module.__dict__["calls"] = 0
        try:
            with torch.no_grad():
                out = self.forward(torch.zeros(shape, device=self.device), [(0, self.k)])
        finally:
            self.probing = False
            self.model.train(was)
        return out


def widest_output(model: nn.Module) -> int:
    """The most floats any module's output holds per example (its size / 2), from one forward of
    a plain model on 2 zero images in eval mode, the global RNG left as it was; 28 x 28 if that
    forward fails (the batched probe then says why)."""
    widest = [28 * 28]

    def measure(module, inputs, output) -> None:
        for o in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(o, torch.Tensor):
                widest[0] = max(widest[0], o.numel() // 2)

    first = next(model.parameters(), None)
    if first is not None and first.device.type == "meta":
        return widest[0]
    hooks = [module.register_forward_hook(measure) for module in model.modules()]
    was, state = model.training, torch.random.get_rng_state()
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, 1, 28, 28, device=first.device if first is not None else "cpu"))
    except Exception:  # noqa: BLE001 (check_batchable reports a model that does not run)
        pass
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was)
        torch.random.set_rng_state(state)
    return widest[0]


# ---------------------------------------------------------------------------- batched modules

class _Batched(nn.Module):
    """A module owning parameters, batched over the members. `sites` are its module paths (one
    per position where the same object sits); `leaves` its parameter names; `calls` counts its
    calls in the current forward, to tell the calls of a reused object apart."""

    def __init__(self, members: Members, module: nn.Module, sites: List[str]):
        super().__init__()
        self.__dict__["members"] = members              # not a submodule
        self.sites = sites
        self.leaves = [n for n, p in module._parameters.items() if p is not None]
        first = sites[0]
        self.canonicals = [members.canonical[f"{first}.{leaf}" if first else leaf] for leaf in self.leaves]
        self.plans = [members.plan(site, self.canonicals) for site in sites]
        self.calls = 0

    def site(self) -> int:
        """Which of its sites this call is (counted per forward for a module at several paths)."""
        if len(self.sites) == 1 and not self.members.probing:
            return 0
        k = self.calls
        self.__dict__["calls"] = k + 1
        if k >= len(self.sites):
            raise RuntimeError(f"module {self.sites[0] or '(root)'} ({type(self).__name__[7:]}) is called more "
                               f"than {len(self.sites)} time(s) per forward; paramlab tells call sites apart by "
                               "module path: give each use its own attribute (e.g. self.fc2 = self.fc) or tie "
                               "separate modules with sharing.groups")
        return k

    def params(self, stacked: bool = False) -> Dict[str, torch.Tensor]:
        return dict(zip(self.leaves, self.members.read(self.plans[self.site()], stacked)))

    def tensors(self) -> List[torch.Tensor]:
        return self.members.read(self.plans[self.site()])

    def extra_repr(self) -> str:
        return f"sites={self.sites}, members={self.members.k}"


class BatchedLinear(_Batched):
    def __init__(self, members, module: nn.Linear, sites, templates):
        super().__init__(members, module, sites)
        self.out_features = module.out_features
        self.__dict__["pin_cache"] = {}

    def _pins(self, kind: str, x: torch.Tensor, w: torch.Tensor) -> Tuple[bool, bool]:
        """A run alone's (forward, backward) to be run on one thread (threads_matter), per input
        shape, remembered here (a step asks for every layer)."""
        key = (kind, tuple(x.shape), x.stride(), torch.get_num_threads())
        pins = self.pin_cache.get(key)
        if pins is None:
            g = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
            forward = kind == "data" and threads_matter("wxt", torch.mm, w, x.t())
            pins = self.pin_cache[key] = (forward, backward_pinned(g, x, None if kind == "data" else w))
        return pins

    def _fm_pins(self, rows: int, w: torch.Tensor) -> Tuple[bool, bool]:
        """_pins for a feature-major layer, from its run alone's operands (`rows` feature-major rows
        of its own, one member's weight w), whatever K: its addmm's forward W x^T, and its backward
        g_h x and W^T g_h (g_h = g^T, (out, rows))."""
        key = ("feature-major", rows, w.shape[0], w.shape[1], torch.get_num_threads())
        pins = self.pin_cache.get(key)
        if pins is None:
            w = w.detach()
            x = torch.empty_strided((rows, w.shape[1]), (1, rows), dtype=w.dtype)
            gh = torch.empty(w.shape[0], rows, dtype=w.dtype)
            pins = self.pin_cache[key] = (threads_matter("wxt", torch.mm, w, x.t()), threads_matter(
                "fm-gx", torch.mm, gh, x) or threads_matter("fm-wg", torch.mm, w.t(), gh))
        return pins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, *b = self.tensors()                             # (K, out, in), (K, out); K = 1: (out, in), (out,)
        b = b[0] if b else None
        m = self.members
        if x.dim() == 2 and not x.is_cuda and (not x.requires_grad if torch.is_grad_enabled()
                                               else x.data_ptr() == m.input_ptr):
            # On rows no gradient flows back into (training: the input batch; evaluation: the data
            # batch itself, recognized by its address, not any layer's rows): each member computes
            # (W x^T + b)^T, a run alone with plain autograd ops (no Python node: ~10 us a step
            # less), one-thread where that product's bits depend on the thread count (threads_matter).
            # Evaluation's other layers stay on F.linear's x W^T, whose bits do not (the 10-class
            # head as W h^T does: measured), so that nothing pins them.
            if m.k == 1:
                h = _wxt_alone(x, w, b, self._pins("data", x, w))
                return h if m.feature_major else h.contiguous()
            spans = m.groups if m.shared(x) else [(k, k + 1) for k in range(m.k)]
            return _DataLinear.apply(x, w, b, spans, m.feature_major)
        if m.feature_major and x.dim() == 2:
            # A layout-free model on the CPU (layout_free): W x^T, on feature-major rows to a
            # feature-major result, as the data layer (MKL is slow on (B, 8) x (8, 8) products and
            # fast on (8, 8) x (8, B): 9 members of the seed model, one core, an epoch -8.5%,
            # measured), and the loss then gets class-major logits without a copy.
            if m.k > 1:
                x = feature_major(m.to_members(x))
                return _LinearFM.apply(x, w, b, self._fm_pins(x.shape[0] // m.k, w[0]))
            x = feature_major(x)
            return _wxt_alone(x, w, b, self._fm_pins(x.shape[0], w))
        if m.k == 1:                                       # a single run: plain F.linear
            h = F.linear(x, w, b)
            if x.dim() == 2 and h.requires_grad and not x.is_cuda and self._pins("linear", x, w)[1]:
                _pin_backward(h)
            return h
        if m.shared(x) and not x.is_cuda:
            # One batch per group: multiply it with the group's members' weights, no K-fold copy
            # (on a GPU one gather and one bmm cost fewer launches than a bmm per group).
            rows = x.reshape(len(m.groups), -1, x.shape[-1])
            parts = [_LinearK.apply(rows[g].expand(e - s, *rows.shape[1:]), w[s:e], None if b is None else b[s:e])
                     for g, (s, e) in enumerate(m.groups)]
            h = torch.cat(parts) if len(parts) > 1 else parts[0]
        else:
            h = _LinearK.apply(m.member_view(x).reshape(m.k, -1, x.shape[-1]), w, b)
        return h.reshape(m.k * m.batch, *x.shape[1:-1], self.out_features)


def _wxt_alone(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], pins: Tuple[bool, bool]) -> torch.Tensor:
    """A run alone's Linear as (W x^T + b)^T with plain autograd ops (no Python node), feature-major;
    pins: its (forward, backward) on one thread (BatchedLinear._pins, _fm_pins)."""
    with one_thread(pins[0]):
        h = torch.mm(w, x.t()) if b is None else torch.addmm(b.unsqueeze(1), w, x.t())
    if pins[1]:
        _pin_backward(h)
    return h.t()


# ------------------------------------------------------------------------- thread count

_THREADS_MATTER: Dict[tuple, bool] = {}


def threads_matter(name: str, fn, *tensors: torch.Tensor) -> bool:
    """Whether fn(*tensors) (one member's matrix product) gives other bits on this process's thread
    count than on one thread. MKL splits products with 5-11 result rows differently on 1 and 2
    threads (measured: the weight gradient of a 10-class head with 16+ inputs, a 5-11 wide input
    layer), and a member trained by a one-thread worker must equal its run alone on all cores: such
    products run on one thread (they are small). Checked once per shape, like `exact`."""
    if torch.get_num_threads() == 1:
        return False
    key = _probe_key(name, tensors)
    verdict = _THREADS_MATTER.get(key)
    if verdict is None:
        probes = [_random_like(t) for t in tensors]
        with torch.no_grad():
            many = fn(*probes)
            with one_thread(True):
                one = fn(*probes)
        verdict = _THREADS_MATTER[key] = not torch.equal(many, one)
    return verdict


class one_thread:
    """Run the enclosed products on one thread if `pinned`. A class, not a generator: entered a few
    times every step, unpinned mostly (0.2 us a use against 0.8, measured)."""
    __slots__ = ("pinned", "n")

    def __init__(self, pinned: bool):
        self.pinned = pinned

    def __enter__(self) -> None:
        self.n = torch.get_num_threads() if self.pinned else 1
        if self.n > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.n > 1:
            torch.set_num_threads(self.n)


def backward_pinned(g: torch.Tensor, x: torch.Tensor, w: Optional[torch.Tensor]) -> bool:
    """Whether a Linear's backward (weight gradient g^T x; input gradient g w, where w is given)
    runs on one thread: where either product's bits depend on the thread count."""
    return threads_matter("gtx", _gtx, g, x) or (w is not None and threads_matter("gw", torch.mm, g, w))


def _pin_backward(h: torch.Tensor) -> None:
    """h's autograd node (a run alone's native Linear) computes its gradients on one thread."""
    n = torch.get_num_threads()
    if n > 1 and h.grad_fn is not None:
        h.grad_fn.register_prehook(lambda grads: torch.set_num_threads(1))
        h.grad_fn.register_hook(lambda inputs, outputs: torch.set_num_threads(n))


def _gtx(g, x):      # a weight gradient as autograd computes it (F.linear's and addmm(b, W, x^T)'s)
    return torch.mm(g.t(), x)


# ------------------------------------------------------------------------- exact batched kernels

_VERDICTS: Dict[tuple, bool] = {}


def exact(name: str, batched, per_member, *tensors: torch.Tensor) -> torch.Tensor:
    """`batched(*tensors)` where it gives every member the bits of `per_member(*tensors)` (the
    kernels each member's run alone calls), else `per_member(*tensors)`. PyTorch's CPU matmuls
    choose their kernels by shapes, layouts, alignment and thread count only, and some batched
    forms round differently from one member's for some shapes (measured here: widths under 4,
    single rows, weight gradients of 1- or 10-wide inputs, ...). So the first call for each of
    these compares the two on random tensors of the same shapes, strides and alignment and
    remembers the verdict (for a tuple of results: all of them equal). One member: its own kernel
    (bmm of one was 1.5x slower than mm here)."""
    if tensors[0].shape[0] == 1:
        return per_member(*tensors)
    key = _probe_key(name, tensors)
    ok = _VERDICTS.get(key)
    if ok is None:
        probes = [_random_like(t) for t in tensors]
        with torch.no_grad():
            ok = _VERDICTS[key] = _equal(batched(*probes), per_member(*probes))
    return batched(*tensors) if ok else per_member(*tensors)


def _equal(a, b) -> bool:
    """torch.equal, also for tuples of tensors (a product's several results)."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def _probe_key(name: str, tensors: Sequence[torch.Tensor]) -> tuple:
    """What a kernel choice may depend on: the product, thread count, shapes, strides, alignment
    (asked ~12 times a step by a 9-member MLP: kept to plain attribute reads)."""
    return (name, torch.get_num_threads(),
            tuple((t.shape, t.stride(), t.data_ptr() % _ALIGN, t.dtype) for t in tensors))


_PROBE_GENERATOR = torch.Generator().manual_seed(0)
_ALIGN = 64                                               # bytes: what a CPU tensor's storage is aligned to


def own(t: torch.Tensor) -> torch.Tensor:
    """Member m's block of a stacked tensor as its run alone holds the same values: in a tensor of its
    own, whose storage starts 64-byte aligned (a fresh tensor's). A block that starts elsewhere (rows
    x width not a multiple of 16 floats: 99 rows of 350) is copied, since MKL's products give other
    bits for a misaligned operand (seen: a 10-class head on 99 x 350 rows)."""
    return t if t.data_ptr() % _ALIGN == 0 else t.clone()


def _misalignment(t: torch.Tensor) -> int:
    """How far t's first element lies past a 64-byte boundary, in elements."""
    return (t.data_ptr() % _ALIGN) // t.element_size()


def _random_like(t: torch.Tensor) -> torch.Tensor:
    """Noise with t's shape, strides and alignment (an expanded t stays expanded)."""
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0
    lanes = max(1, _ALIGN // t.element_size())
    storage = torch.empty(span + lanes, dtype=t.dtype).uniform_(-1, 1, generator=_PROBE_GENERATOR)
    offset = (_misalignment(t) - _misalignment(storage)) % lanes
    return storage.as_strided(t.shape, t.stride(), offset)


class _DataLinear(torch.autograd.Function):
    """Linear on rows that need no gradient, for K >= 2 members: member m's output is
    addmm(b_m, W_m, x^T)^T, the product a run alone computes (BatchedLinear), and its gradients
    are what autograd gives that run: dW_m = g_m^T x, db_m = g_m summed over rows. With the weight
    as the left operand a narrow layer (the seed's 8-wide first layer) runs ~1.6x faster on one
    core than F.linear's x W^T, and the weights of the members that see one batch stack into one
    product (`exact` checks, per shape, that it gives each member its own bits).
    x: (G*B, in) shared rows, spans[g] = the members of group g; or (K*B, in) member-major rows
    with spans = one member each. w: (K, out, in); b: (K, out) or None. The result is laid out
    feature-major (memory (out, K*rows)) where `feature_major_out`, as the model's layers are."""

    @staticmethod
    def forward(ctx, x, w, b, spans, feature_major_out=False):
        ctx.save_for_backward(x, w)
        ctx.spans, ctx.has_bias = spans, b is not None
        k, o, i = w.shape
        groups = len(spans)
        rows = x.shape[0] // groups
        # Returned as allocated, not as a view: a view made inside a Function may not be changed
        # in place afterwards (ReLU(inplace=True) right after the layer).
        result = torch.empty_strided((k * rows, o), (1, k * rows) if feature_major_out else (o, 1), dtype=x.dtype)
        out = result.view(k, rows, o)
        xs = x.view(groups, rows, i)
        bs = b.unsqueeze(2) if b is not None else w.new_zeros(0)     # (K, out, 1); unused without bias
        with one_thread(threads_matter("wxt", torch.mm, w[0], xs[0].t())):
            if groups == k:                                # one batch per member
                h = exact("linear-data-bmm", _bmm_wxt, _loop_wxt, w, xs, bs)
                out.copy_(h.transpose(1, 2))
            else:                                          # one batch per group of members
                for g, (s, e) in enumerate(spans):
                    h = exact("linear-data-rows", _rows_wxt, _loop_wxt, w[s:e], xs[g:g + 1], bs[s:e])
                    out[s:e].copy_(h.transpose(1, 2))
        return result

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        spans = ctx.spans
        k, o, i = w.shape
        groups = len(spans)
        rows = x.shape[0] // groups
        gs = g.reshape(k, rows, o)
        xs = x.view(groups, rows, i)
        dw = db = None
        with one_thread(backward_pinned(gs[0], xs[0], None)):   # as the run alone's (pinned) node
            if ctx.needs_input_grad[1]:
                if groups == k:
                    dw = exact("linear-data-dw-bmm", _bmm_gx, _loop_gx, gs, xs)
                else:
                    parts = [exact("linear-data-dw-rows", _rows_gx, _loop_gx, gs[s:e], xs[gi:gi + 1])
                             for gi, (s, e) in enumerate(spans)]
                    dw = torch.cat(parts) if len(parts) > 1 else parts[0]
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = exact("linear-data-db", lambda gs: gs.sum(1),
                           lambda gs: torch.stack([own(gs[m]).sum(0) for m in range(gs.shape[0])]), gs)
        return None, dw, db, None, None


# The products of _DataLinear: member by member (a run alone's), and two batched forms.
# w (n, out, in), xs (n or 1, rows, in), bs (n, out, 1) or empty (no bias) -> (n, out, rows)
def _loop_wxt(w, xs, bs):
    x = [own(xs[m if xs.shape[0] > 1 else 0]).t() for m in range(w.shape[0])]
    if bs.numel() == 0:
        return torch.stack([torch.mm(own(w[m]), x[m]) for m in range(w.shape[0])])
    return torch.stack([torch.addmm(own(bs[m]), own(w[m]), x[m]) for m in range(w.shape[0])])


def _bmm_wxt(w, xs, bs):
    return torch.bmm(w, xs.transpose(1, 2)) if bs.numel() == 0 else torch.baddbmm(bs, w, xs.transpose(1, 2))


def _rows_wxt(w, xs, bs):   # the members' weights stacked into one product
    n, o, i = w.shape
    if bs.numel() == 0:
        return torch.mm(w.reshape(n * o, i), xs[0].t()).view(n, o, -1)
    return torch.addmm(bs.reshape(n * o, 1), w.reshape(n * o, i), xs[0].t()).view(n, o, -1)


# gs (n, rows, out), xs (n or 1, rows, in) -> (n, out, in): each member's g^T x
def _loop_gx(gs, xs):
    return torch.stack([_gtx(own(gs[m]), own(xs[m if xs.shape[0] > 1 else 0])) for m in range(gs.shape[0])])


def _bmm_gx(gs, xs):
    return torch.bmm(gs.transpose(1, 2), xs)


def _rows_gx(gs, xs):
    n, rows, o = gs.shape
    return torch.mm(gs.transpose(1, 2).reshape(n * o, rows), xs[0]).view(n, o, -1)


class _LinearK(torch.autograd.Function):
    """(K, N, in) @ (K, out, in)^T + (K, out) -> (K, N, out) for K members whose rows need a
    gradient, computed so that each member gets the bits F.linear (and its backward) gives it
    alone: each product as one bmm where `exact` has seen that equal to the member's own matmul
    for these shapes, else member by member. On a GPU all three are one bmm each (its kernels are
    not K-invariant anyway, and a launch per member would dominate a CUDA-graphed step of many
    small members)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        if x.is_cuda:
            return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if b is not None \
                else torch.bmm(x, w.transpose(1, 2))
        if b is None:
            return exact("linear-bmm", lambda x, w: torch.bmm(x, w.transpose(1, 2)),
                         lambda x, w: torch.stack([F.linear(own(x[m]), own(w[m])) for m in range(w.shape[0])]), x, w)
        return exact("linear-baddbmm", lambda x, w, b: torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)),
                     lambda x, w, b: torch.stack([F.linear(own(x[m]), own(w[m]), own(b[m])) for m in range(w.shape[0])]),
                     x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        dx = dw = db = None
        if g.is_cuda:
            dx = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
            dw = _bmm_gx(g, x) if ctx.needs_input_grad[1] else None
            db = g.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
            return dx, dw, db
        # A run alone computes its whole Linear backward on one thread where its bits depend on the
        # thread count (BatchedLinear._pins): so does each member, dx included.
        with one_thread(backward_pinned(g[0], x[0], w[0])):
            if ctx.needs_input_grad[0]:
                dx = exact("linear-dx", torch.bmm,
                           lambda g, w: torch.stack([own(g[m]) @ own(w[m]) for m in range(w.shape[0])]), g, w)
            if ctx.needs_input_grad[1]:
                dw = exact("linear-dw", _bmm_gx, _loop_gx, g, x)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = g.sum(1)
        return dx, dw, db


class _LinearFM(torch.autograd.Function):
    """A Linear for K >= 2 members on feature-major rows x (K*B, in) (memory (in, K*B), member m's
    rows in columns m*B..), w (K, out, in), b (K, out) or None, to a feature-major (K*B, out): each
    member gets the bits of its run alone's addmm(b, W, x^T) and of that node's backward (autograd's
    own, BatchedLinear's feature-major path), as one batched product where `exact` has seen that
    equal for these shapes, else member by member. `pins`: the run alone's (forward, backward) on
    one thread (BatchedLinear._fm_pins). CPU only."""

    @staticmethod
    def forward(ctx, x, w, b, pins):
        ctx.save_for_backward(x, w, b)
        ctx.pins = pins
        k, o, i = w.shape
        n = x.shape[0] // k
        xt = x.view(k, n, i).transpose(1, 2)                      # (K, in, B): each member's x^T
        bs = b.unsqueeze(2) if b is not None else w.new_zeros(0)  # (K, out, 1); empty without bias
        with one_thread(pins[0]):
            h = exact("fm-addmm", _fm_batched, _fm_alone, xt, w, bs)
        # Copied into place: a product written straight into the strided result runs as one addmm
        # per member inside PyTorch (measured: 13.6 us against 7.7 with the copy, 9 x 8 x 8 x 256).
        result = torch.empty_strided((k * n, o), (1, k * n), dtype=x.dtype)
        result.view(k, n, o).transpose(1, 2).copy_(h)
        return result

    @staticmethod
    def backward(ctx, g):
        x, w, b = ctx.saved_tensors
        k, o, i = w.shape
        n = x.shape[0] // k
        gt = g.reshape(k, n, o).transpose(1, 2)                   # (K, out, B): each member's g_h = g^T
        xs = x.view(k, n, i)
        bs = b if b is not None else w.new_zeros(0)
        with one_thread(ctx.pins[1]):
            dxt, dw, db = exact("fm-backward", _fm_backward, _fm_backward_alone, gt, xs, w, bs)
        dx = torch.empty_strided((k * n, i), (1, k * n), dtype=x.dtype)
        dx.view(k, n, i).transpose(1, 2).copy_(dxt)               # x's gradient, feature-major
        return dx, dw, db if b is not None else None, None


def _fm_batched(xt, w, bs):
    return torch.baddbmm(bs, w, xt) if bs.numel() else torch.bmm(w, xt)


def _fm_alone(xt, w, bs):
    """Each member's forward as its run alone computes it (BatchedLinear), on operands laid out as
    that run holds them (`alone`)."""
    return torch.stack([torch.addmm(alone(bs[m]), alone(w[m]), alone(xt[m])) if bs.numel()
                        else torch.mm(alone(w[m]), alone(xt[m])) for m in range(w.shape[0])])


def _fm_backward(gt, xs, w, bs):
    """Each member's (x^T's, W's, b's gradient), as one batched product each."""
    return torch.bmm(w.transpose(1, 2), gt), torch.bmm(gt, xs), gt.sum(2) if bs.numel() else bs


def _fm_backward_alone(gt, xs, w, bs):
    """The same from each member's run alone: its addmm node's backward, by autograd itself, on
    operands laid out as that run holds them (`alone`). The backward of a scalar, whose gradient
    h * g_h passes on g_h's bits and layout (an explicit gradient's first call imports torch.fx:
    ~0.3 s)."""
    parts = []
    for m in range(w.shape[0]):
        with torch.enable_grad():
            x_m = alone(xs[m]).detach().requires_grad_()          # leaves, in the layouts alone() gives
            w_m = alone(w[m]).detach().requires_grad_()
            b_m = alone(bs[m]).detach().requires_grad_() if bs.numel() else None
            h = torch.mm(w_m, x_m.t()) if b_m is None else torch.addmm(b_m.unsqueeze(1), w_m, x_m.t())
            (h * alone(gt[m])).sum().backward()
        parts.append((x_m.grad.t(), w_m.grad, b_m.grad if b_m is not None else bs))
    dxt, dw, db = zip(*parts)
    return torch.stack(dxt), torch.stack(dw), torch.stack(db) if bs.numel() else bs


def alone(t: torch.Tensor) -> torch.Tensor:
    """t (one member's block of a batched tensor) as its run alone holds it: a tensor of its own,
    64-byte aligned, in the same layout: row-major, or column-major (a transposed row-major one,
    as a block of feature-major rows is)."""
    if t.dim() == 2 and t.stride(0) == 1 and t.stride(1) != 1:
        return own(t.t().contiguous()).t()
    return own(t.contiguous())


def feature_major(x: torch.Tensor) -> torch.Tensor:
    """Rows x (N, F) laid out feature-major (memory (F, N)): x itself, or a copy."""
    stride = x.stride()
    if stride[0] == 1 and stride[1] == x.shape[0] or x.t().is_contiguous():
        return x
    return x.t().contiguous().t()


def layout_free(model: nn.Module) -> bool:
    """Whether a model's Linear layers may hand on feature-major rows (memory (features, rows)) on
    the CPU: a built-in model whose forward only passes activations from module to module (class
    attribute `layout_free`; a user's forward may view them) and whose activations round the same
    in any layout (none in ELEMENTWISE: those kernels round a scalar tail otherwise)."""
    return bool(getattr(type(model), "layout_free", False)) and \
        not any(isinstance(module, ELEMENTWISE) for module in model.modules())


class BatchedConv2d(_Batched):
    """Each member's F.conv2d on its rows (faster than one grouped convolution here, measured:
    oneDNN's grouped kernels are slow for few channels, and a member gets the bits of its own run)."""

    def __init__(self, members, module: nn.Conv2d, sites, templates):
        super().__init__(members, module, sites)
        self.conv = dict(stride=module.stride, dilation=module.dilation, groups=module.groups)
        self.padding = module.padding if module.padding_mode == "zeros" else 0
        self.pad = (module._reversed_padding_repeated_twice, module.padding_mode) \
            if module.padding_mode != "zeros" else None

    def _one(self, x, w, b):
        if self.pad is not None:
            x = F.pad(x, self.pad[0], mode=self.pad[1])
        return F.conv2d(x, w, b, padding=self.padding, **self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        w, *b = self.tensors()                             # K = 1: (Co, C, kh, kw); else (K, Co, C, kh, kw)
        b = b[0] if b else None
        if m.k == 1:
            return self._one(x, w, b)
        rows = m.member_view(x)                            # (K, B, C, H, W)
        return torch.cat([self._one(rows[k], w[k], None if b is None else b[k]) for k in range(m.k)])


class BatchedBatchNorm(_Batched):
    """BatchNorm1d/2d, each member's F.batch_norm on its rows with its own running statistics
    (rows of the stacked (K, C) buffers)."""

    def __init__(self, members, module: nn.modules.batchnorm._BatchNorm, sites, templates):
        super().__init__(members, module, sites)
        self.eps, self.momentum = module.eps, module.momentum
        self.track = module.track_running_stats
        if self.track:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                stacked = torch.stack([t.get_submodule(sites[0]).get_buffer(name) if sites[0] else t.get_buffer(name)
                                       for t in templates]).to(members.device)
                self.register_buffer(name, stacked)
                members.buffers[f"{sites[0]}.{name}" if sites[0] else name] = stacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        p = self.params(stacked=True)
        rows = m.member_view(x)
        use_batch_stats = self.training or not self.track
        factor = 0.0
        if self.training and self.track:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked[0])
        out = [F.batch_norm(rows[k], self.running_mean[k] if self.track else None,
                            self.running_var[k] if self.track else None,
                            p["weight"][k] if "weight" in p else None, p["bias"][k] if "bias" in p else None,
                            use_batch_stats, factor, self.eps) for k in range(m.k)]
        return torch.cat(out) if m.k > 1 else out[0]


class BatchedLayerNorm(_Batched):
    def __init__(self, members, module: nn.LayerNorm, sites, templates):
        super().__init__(members, module, sites)
        self.shape, self.eps = tuple(module.normalized_shape), module.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        p = self.params(stacked=True)
        rows = m.member_view(x)
        out = [F.layer_norm(rows[k], self.shape, p["weight"][k] if "weight" in p else None,
                            p["bias"][k] if "bias" in p else None, self.eps) for k in range(m.k)]
        return torch.cat(out) if m.k > 1 else out[0]


class BatchedDropout(nn.Module):
    """Dropout / Dropout2d with each member's own rate (read from its template) and generator."""

    def __init__(self, members: Members, module: nn.Module, sites: List[str], templates):
        super().__init__()
        self.__dict__["members"] = members
        self.rates = [float(t.get_submodule(sites[0]).p) for t in templates]
        self.channelwise = isinstance(module, nn.Dropout2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.rates):
            return x
        return self.members.dropout(self.members.to_members(x), self.rates, self.channelwise, self)

    def extra_repr(self) -> str:
        return f"rates={self.rates}"


class VmapModule(_Batched):
    """A module type paramlab does not know (with its whole subtree): `functional_call` under
    `torch.func.vmap` over the members, its tensors passed in per call site so tied ones are
    tapped like everywhere else. Randomness inside (dropout) is drawn by vmap, not per member."""

    def __init__(self, members, module: nn.Module, sites, templates):
        super().__init__(members, module, sites)
        self.__dict__["inner"] = module                   # not a submodule: its paths stay its own
        self.names = [n for n, _ in module.named_parameters(remove_duplicate=False)]
        self.buffer_names = [n for n, _ in module.named_buffers()]
        first = sites[0]
        stacked = {}
        for name in self.buffer_names:
            full = f"{first}.{name}" if first else name
            stacked[name] = torch.stack([t.get_buffer(full) for t in templates]).to(members.device)
            members.buffers[full] = stacked[name]
        self.__dict__["stacked_buffers"] = stacked
        # Per path of this module: [(its parameter names owned by one submodule, that call site's plan)].
        self.vmap_plans = [self._plans(prefix) for prefix in sites]

    def _plans(self, prefix: str) -> List[Tuple[List[str], tuple]]:
        m = self.members
        by_site: Dict[str, List[str]] = {}
        for name in self.names:
            full = f"{prefix}.{name}" if prefix else name
            by_site.setdefault(full.rpartition(".")[0], []).append(name)
        return [(names, m.plan(site, [m.canonical[f"{prefix}.{n}" if prefix else n] for n in names]))
                for site, names in by_site.items()]

    def forward(self, *args, **kwargs):
        from torch.func import functional_call, vmap

        m = self.members
        params: Dict[str, torch.Tensor] = {}
        for names, plan in self.vmap_plans[self.site()]:
            params.update(zip(names, m.read(plan, stacked=True)))
        self.inner.train(self.training)
        tensor_args = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        rows = [m.member_view(args[i]) for i in tensor_args]

        def one_member(p, b, *xs):
            call = list(args)
            for i, x in zip(tensor_args, xs):
                call[i] = x
            return functional_call(self.inner, (p, b), tuple(call), kwargs, tie_weights=False, strict=False)

        out = vmap(one_member, randomness="different")(params, self.stacked_buffers, *rows)
        if isinstance(out, torch.Tensor):
            return out.reshape(-1, *out.shape[2:])
        return type(out)(o.reshape(-1, *o.shape[2:]) for o in out)


class BatchedElementwise(nn.Module):
    """An activation whose CPU kernel rounds in its scalar tail otherwise than in its vectorised
    body (sigmoid and SiLU here, others maybe elsewhere): on one batch of all members' rows, which
    of a member's elements fall in a tail depends on the whole tensor's size and on where the
    threads split it, so its bits would differ from its run alone's (seen: LeNet's sigmoids). Each
    member's rows get their own call instead, the call of its run alone. A call that PyTorch splits
    between threads where the pieces' blocks do not line up with one thread's (_split_moves) runs
    on one thread, forward and backward, in an ensemble and alone: a one-thread worker's member then
    equals its run alone on all cores (this is computed, not probed: a moved tail changes a few
    elements, and only for some values). A function over the batch dimension (a softmax over
    dim 0) also stays inside each member's rows."""

    GRAIN = 32768   # ATen's internal::GRAIN_SIZE: a loop of fewer elements runs on one thread
    BLOCK = 64      # elements; a multiple of the vectorised loop's step (2 vectors: 16 or 32 floats)

    def __init__(self, members: Members, module: nn.Module, sites: List[str], templates):
        super().__init__()
        self.__dict__["members"] = members
        self.__dict__["fn"] = module          # the template's own (stateless) module, not a submodule

    def _split_moves(self, n: int) -> bool:
        """Whether PyTorch's split of an n-element loop between its threads (parallel_for: the
        threads that GRAIN allows, divup(n, threads) elements each) starts a piece off the
        vectorised blocks of one thread's loop, moving a scalar tail."""
        threads = min(torch.get_num_threads(), -(-n // self.GRAIN))
        return threads > 1 and -(-n // threads) % self.BLOCK != 0

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        pinned = not x.is_cuda and self._split_moves(x.numel())
        with one_thread(pinned):
            y = self.fn(x)
        if pinned:
            _pin_backward(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        if x.is_cuda and not self._over_batch(x):            # one kernel (no bit-equality on a GPU)
            return self.fn(x)
        if m.k == 1:
            return self._one(x)
        rows = m.member_view(x)
        return torch.cat([self._one(rows[k]) for k in range(m.k)])

    def _over_batch(self, x: torch.Tensor) -> bool:
        """A softmax over the rows (dim 0, or no dim on a 1-d or 3-d input: PyTorch's legacy choice)."""
        if not isinstance(self.fn, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return False
        dim = self.fn.dim
        return dim is None and x.dim() in (1, 3) or dim is not None and dim % x.dim() == 0


# Activations whose CPU kernels are exact in any part of their loops (max, compare, one multiply)
# keep their one call on all members' rows; these get a call per member (BatchedElementwise).
ELEMENTWISE = (nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish,
               nn.LogSigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink, nn.Softmax,
               nn.LogSoftmax, nn.Softmin)


KNOWN = {nn.Linear: BatchedLinear, nn.Conv2d: BatchedConv2d, nn.BatchNorm1d: BatchedBatchNorm,
         nn.BatchNorm2d: BatchedBatchNorm, nn.LayerNorm: BatchedLayerNorm,
         nn.Dropout: BatchedDropout, nn.Dropout2d: BatchedDropout, **{t: BatchedElementwise for t in ELEMENTWISE}}


def _batch_modules(members: Members, templates: Sequence[nn.Module]):
    """Replace, in template 0's tree, every module that owns parameters, draws dropout masks or is
    an activation in ELEMENTWISE by its batched twin (every path of a reused object gets the same
    twin). Returns (root, twins)."""
    model = templates[0]
    paths: Dict[int, List[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    twins: Dict[int, nn.Module] = {}
    inside_vmap: List[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if id(module) in twins or any(path.startswith(p + ".") or p == "" for p in inside_vmap):
            continue
        owns = any(p is not None for p in module._parameters.values())
        kind = KNOWN.get(type(module))
        if kind is not None and (owns or kind in (BatchedDropout, BatchedElementwise)):
            twins[id(module)] = kind(members, module, paths[id(module)], templates)
        elif owns:
            twins[id(module)] = VmapModule(members, module, paths[id(module)], templates)
            inside_vmap += paths[id(module)]
    root = model
    for key, twin in twins.items():
        for path in paths[key]:
            if path == "":
                root = twin
                continue
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, twin)
    return root, [t for t in twins.values() if isinstance(t, _Batched)]


def check_batchable(members: Members) -> None:
    """A forward on a probe batch: the model maps (B,1,28,28) to (B,10) and every module batches,
    or a UserError saying what is wrong."""
    try:
        out = members.probe()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"model forward on a (2, 1, 28, 28) batch failed: {one_line(e)}") from None
    if tuple(out.shape) != (2 * members.k, 10):
        shape = (2, *out.shape[1:]) if out.shape[0] == 2 * members.k else tuple(out.shape)
        raise UserError(f"the model maps a (2, 1, 28, 28) batch to shape {tuple(shape)}; it must return (B, 10) "
                        "logits for FashionMNIST's 10 classes")
