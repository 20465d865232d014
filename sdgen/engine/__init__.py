"""Image engines behind one small interface; `get_engine` picks one by name."""

from sdgen.engine.base import Engine, get_engine

__all__ = ["Engine", "get_engine"]
