"""The launchers by name: `get_launcher("slurm", ...)`. Each is imported only when asked
for, so base.py imports no launcher."""

from __future__ import annotations

from sdgen.exceptions import UserError
from sdgen.launchers.base import Launcher


def get_launcher(name: str, **options) -> Launcher:
    if name == "local":
        from sdgen.launchers.local import LocalLauncher

        return LocalLauncher(**options)
    if name == "slurm":
        from sdgen.launchers.slurm import SlurmLauncher

        return SlurmLauncher(**options)
    if name == "adsp":
        from sdgen.launchers.adsp import AdspLauncher

        return AdspLauncher(**options)
    raise UserError(f"unknown launcher {name!r}: this sdgen has 'local', 'adsp' and 'slurm'")
