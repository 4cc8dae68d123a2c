"""`python -m runner.train [overrides]`: one run, or a grid with `-m` (the command line lives in
runner.cli, the training loop in runner.engine)."""
from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
