"""The engines by name: `get_engine("keras-cv")`. Each is imported only when asked for (the
keras-cv one pulls in the ML packages), so base.py imports no engine."""

from __future__ import annotations

import os

from sdgen import settings
from sdgen.engine.base import Engine
from sdgen.exceptions import EngineError


def _dry_run(data_root):
    from sdgen.engine.dryrun import DryRunEngine

    return DryRunEngine()


def _snapshots_apply() -> bool:
    """On JAX with the fused sampler, workers run from model snapshots (exported.py) and
    skip importing keras; any other set-up builds the keras models in every worker."""
    return (
        os.environ.get("KERAS_BACKEND") == "jax"
        and settings.get("SDGEN_SNAPSHOT")
        and settings.get("SDGEN_SAMPLER") == "fused"
    )


def _keras_cv(data_root):
    try:
        if _snapshots_apply():
            from sdgen.engine.exported import ExportedEngine

            return ExportedEngine(data_root)
        from sdgen.engine.kerascv import KerasCVEngine
    except ImportError as e:
        raise EngineError(
            f"the keras-cv engine needs the ML packages ({e.name or e}): "
            "install them with `pip install 'sdgen[ml]'` (or `make run` does it), "
            "or use `engine: dry-run` to try a set-up without a model"
        ) from None
    return KerasCVEngine(data_root)


ENGINES = {"dry-run": _dry_run, "keras-cv": _keras_cv}


def get_engine(name: str, data_root=None) -> Engine:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None
    return factory(data_root)
