"""Where the data directory is: --data, else $SDGEN_DATA, else ./data."""

from pathlib import Path

from sdgen import settings
from sdgen.exceptions import UserError


def data_root(cli_value: str | None = None) -> Path:
    value = cli_value or settings.get("SDGEN_DATA")
    # resolved (symlinks, ..), so that every spelling of one folder is one data directory:
    # a daemon restarted through a symlink must know its predecessor's workers (local.py)
    try:
        root = Path(value).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, an unreadable ~user
        raise UserError(f"cannot use data directory {value!r} ({e}): check --data or SDGEN_DATA") from None
    if root.exists() and not root.is_dir():
        raise UserError(f"data directory {str(root)!r} is a file, not a folder: check --data or SDGEN_DATA")
    if not root.exists() and not root.parent.is_dir():
        raise UserError(
            f"data directory {str(root)!r} cannot be made: {str(root.parent)!r} is not a folder; "
            "check --data or SDGEN_DATA"
        )
    return root
