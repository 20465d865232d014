"""Pack the running Python environment into <data>/worker_env, so ADSP jobs start without
installing anything (the original example's step 1, made safe).

conda-pack inside a conda environment, venv-pack inside a virtualenv. Built under a lock in
a temporary folder and renamed into place, so a half-built environment is never used; a
fingerprint of the installed packages makes a second run a no-op and rebuilds a changed one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from filelock import FileLock

from sdgen.exceptions import UserError

log = logging.getLogger(__name__)

FINGERPRINT = ".sdgen-fingerprint"


def fingerprint() -> str:
    """The installed distributions and the interpreter: what a worker environment holds."""
    dists = sorted(f"{d.metadata['Name']}=={d.version}".lower() for d in importlib.metadata.distributions())
    text = "\n".join([platform.python_version(), sys.prefix, *dists])
    return hashlib.sha256(text.encode()).hexdigest()


def env_kind() -> str:
    if os.environ.get("CONDA_PREFIX") and Path(os.environ["CONDA_PREFIX"]).resolve() == Path(sys.prefix).resolve():
        return "conda"
    if sys.prefix != sys.base_prefix:
        return "venv"
    raise UserError(
        "sdgen bootstrap packs a conda environment or a virtualenv; this Python is "
        "neither: activate the environment the workers should use"
    )


def _pack(kind: str, archive: Path) -> None:
    try:
        if kind == "conda":
            import conda_pack

            conda_pack.pack(prefix=sys.prefix, output=str(archive), ignore_editable_packages=False)
        else:
            import venv_pack

            venv_pack.pack(prefix=sys.prefix, output=str(archive))
    except ImportError as e:
        tool = "conda-pack" if kind == "conda" else "venv-pack"
        raise UserError(
            f"{tool} is not installed ({e.name}): install it in this environment "
            f"(`pip install {tool}` or `conda install {tool}`)"
        ) from None
    except Exception as e:  # noqa: BLE001 - e.g. editable installs, which cannot be packed
        raise UserError(f"could not pack {sys.prefix}: {' '.join(str(e).split())}") from None


def bootstrap(data_root: Path, force: bool = False) -> tuple[str, Path]:
    """('unchanged' | 'built', path). Safe to run from several processes at once."""
    target = Path(data_root) / "worker_env"
    target.parent.mkdir(parents=True, exist_ok=True)
    want = fingerprint()
    with FileLock(str(target.parent / "worker_env.lock")):
        current = target / FINGERPRINT
        if not force and current.exists() and current.read_text().strip() == want:
            return "unchanged", target
        kind = env_kind()
        # Leftovers of builds killed half-way (we hold the lock: nobody else is building).
        for stale in target.parent.glob(".worker_env-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        token = secrets.token_hex(4)
        archive = target.parent / f".worker_env-{token}.tar.gz"
        building = target.parent / f".worker_env-{token}.building"
        try:
            log.info("packing %s (%s) ...", sys.prefix, kind)
            _pack(kind, archive)
            building.mkdir()
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                    tar.extractall(building, filter="tar")
                else:
                    tar.extractall(building)
            if kind == "conda" and (building / "bin" / "conda-unpack").exists():
                subprocess.run([str(building / "bin" / "conda-unpack")], check=True)
            # The fingerprint goes in last: a folder without it was never finished.
            (building / FINGERPRINT).write_text(want + "\n")
            old = None
            if target.exists():
                old = target.parent / f".worker_env-{token}.old"
                os.rename(target, old)
            os.rename(building, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(building, ignore_errors=True)
    return "built", target
