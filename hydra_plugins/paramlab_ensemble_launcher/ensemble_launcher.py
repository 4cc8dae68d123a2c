"""`hydra/launcher=ensemble` and `hydra/sweeper=paramlab`: Hydra finds plugins only in the
`hydra_plugins` namespace package, hence this thin module; the logic lives in runner/launcher.py."""
from runner.launcher import EnsembleLauncherBase, PlannedSweeperBase, register

register()


class EnsembleLauncher(EnsembleLauncherBase):
    pass


class PlannedSweeper(PlannedSweeperBase):
    pass
