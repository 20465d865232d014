"""Where the data directory is: --data, else $SDGEN_DATA, else ./data."""

import os
from pathlib import Path


def data_root(cli_value: str | None = None) -> Path:
    value = cli_value or os.environ.get("SDGEN_DATA") or "data"
    return Path(value).expanduser().absolute()
