"""Which torch `make install` puts into .venv first: on a machine without an NVIDIA GPU, the newest
CPU-only build (a `+cpu` version) that pip's package sources offer within pyproject.toml's torch
range, printed as a requirement (`torch==2.13.0+cpu`); nothing when there is a GPU, when no such
build is offered, or with PARAMLAB_TORCH=default, and pip then installs its default build.

Why: the default Linux wheel carries CUDA (~3 GB of libraries, which `import torch` loads in every
process: measured here 1.5 s against 1.07 s for the CPU-only build, with the same per-epoch speed).
A grid's ensemble processes each pay that import before they train; the whole 18-job preset
command is 0.25-0.5 s (4-7%) faster with the CPU-only build. A new .venv is 1.4 GB instead of ~6.

    python tools/cpu_torch.py          (run by the Makefile with the venv's python)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def has_nvidia_gpu() -> bool:
    return bool(shutil.which("nvidia-smi")) or Path("/proc/driver/nvidia/version").exists() \
        or Path("/dev/nvidia0").exists()


def torch_range() -> str:
    """The torch specifier of pyproject.toml's dependencies ('>=2.11,<=2.14.1')."""
    match = re.search(r'"torch\s*([<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text())
    return match.group(1).replace(" ", "") if match else ""


def offered_versions() -> list:
    """The versions of torch pip's package sources offer (index, extra indexes, find-links)."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch"], capture_output=True,
                             text=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    line = next((x for x in out.splitlines() if x.startswith("Available versions:")), "")
    return [v.strip() for v in line.partition(":")[2].split(",") if v.strip()]


def cpu_requirement() -> str:
    if os.environ.get("PARAMLAB_TORCH", "").lower() == "default" or has_nvidia_gpu():
        return ""
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import InvalidVersion, Version

    wanted = SpecifierSet(torch_range())
    builds = []
    for text in offered_versions():
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if version.local == "cpu" and wanted.contains(version, prereleases=False):
            builds.append(version)
    return f"torch=={max(builds)}" if builds else ""


if __name__ == "__main__":
    print(cpu_requirement())
