"""Where workers run: local processes now, ADSP and Slurm jobs later, behind one interface."""

from sdgen.launchers.base import ExitedWorker, Launcher, get_launcher

__all__ = ["ExitedWorker", "Launcher", "get_launcher"]
