"""`hydra/launcher=ensemble`: Hydra finds launchers only in the `hydra_plugins` namespace
package, hence this thin module; the logic lives in runner/launcher.py."""
from runner.launcher import EnsembleLauncherBase, register

register()


class EnsembleLauncher(EnsembleLauncherBase):
    pass
