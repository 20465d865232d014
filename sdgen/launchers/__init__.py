"""Where workers run: local processes, ADSP jobs and Slurm jobs, behind one interface."""

from sdgen.launchers.base import ExitedWorker, Launcher
from sdgen.launchers.registry import get_launcher

__all__ = ["ExitedWorker", "Launcher", "get_launcher"]
