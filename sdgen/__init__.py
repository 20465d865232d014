"""sdgen: batch text-to-image generation driven by a file spool."""

__version__ = "0.1.0"
