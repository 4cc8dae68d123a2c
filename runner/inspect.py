"""`python -m runner.inspect [overrides]`: the built model's parameter table, without training.

One row per unique parameter: canonical name, shape, numel, tie group, every alias and call
site; then unique and total counts (total counts each alias of a tied tensor)."""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from .cli import CONF_DIR, guard  # registers paramlab's configs, resolvers and launcher


def table(cfg: DictConfig) -> str:
    import torch

    from .engine import build

    torch.manual_seed(cfg.seed)
    model, tie_map = build(cfg, device=None if cfg.model.name == "custom" else "meta")
    groups = {p.canonical: k for k, p in enumerate(q for q in tie_map.params if q.tied)}
    rows = [("name", "shape", "numel", "tie group", "aliases", "call sites")]
    for p in tie_map.params:
        rows.append((p.canonical, "x".join(map(str, p.shape)), str(p.numel),
                     f"#{groups[p.canonical]}" if p.tied else "-",
                     ", ".join(p.aliases), ", ".join(p.call_sites)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"model={cfg.model.name} sharing={cfg.sharing.name} init={cfg.init.name}")
    lines.append(f"unique parameters: {tie_map.unique}")
    lines.append(f"total parameters:  {tie_map.total}  (every alias of a tied tensor counted)")
    lines.append(f"tied tensors: {sum(p.tied for p in tie_map.params)}")
    return "\n".join(lines)


def _task(cfg: DictConfig) -> None:
    print(table(cfg))


def main() -> None:
    import hydra

    guard("inspect")
    # A single "run" that writes nothing: no output directory, no .hydra folder.
    sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/hydra_logging=none", "hydra.mode=RUN"]

    # An absolute path: works for `python -m`, console scripts and `python -c` alike.
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(_task)()


if __name__ == "__main__":
    main()
