"""Image engines behind one small interface; `get_engine` picks one by name."""

from sdgen.engine.base import Engine, ImageJob
from sdgen.engine.registry import get_engine

__all__ = ["Engine", "ImageJob", "get_engine"]
