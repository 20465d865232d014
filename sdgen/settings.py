"""Every environment variable sdgen reads (SDGEN_*, ADSP_*), declared once: its name, the
values it takes, its default and what it does; parsed and checked here and nowhere else.

Settings live in the environment because that is what reaches a worker however it is
launched (a local process, an ADSP job, a Slurm job). A value is read when it is used, so
a test or a wrapper can change it, and a bad one is a one-line SettingError naming the
variable, the value and what it should be. `check()` reads them all: the daemon calls it
before it starts (its workers inherit its settings), a worker before it makes an engine
(so a bad value fails the ticket with its reason instead of killing the worker).

Pure: imports nothing of sdgen but its exceptions, so every module, even the CLI's
quickest commands, can read its settings without loading an engine.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sdgen import defaults
from sdgen.exceptions import SettingError

# The model precisions an engine can run in (keras dtype policies).
PRECISIONS = ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")
# The largest batch bucket (engine/batching.py builds its buckets up to it).
LARGEST_BATCH = 64

_SWITCH = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}")
_SHOWN = 80  # at most this much of a bad value is echoed: the error stays one short line


def shown(value: str) -> str:
    """A value as an error message quotes it: repr (so control characters and line breaks
    are escaped and the message stays one line), cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]  # text -> value; raises ValueError(what it must be)
    default: Any  # the value when unset or empty (None: the code decides, see `shown_default`)
    allowed: str  # the values it takes, in words, for errors and the README
    description: str  # one line: what it does
    shown_default: str = ""  # the default in words, where `default` does not say it

    def value(self, text: str | None) -> Any:
        """The parsed value of `text` (None or blank: the default), or a SettingError."""
        if text is None or not text.strip():
            return self.default
        try:
            return self.parse(text.strip())
        except (ValueError, OverflowError):
            raise SettingError(f"{self.name} must be {self.allowed}, got {shown(text)}") from None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError
        return text.lower()

    return parse


def _switch(text: str) -> bool:
    if text.lower() not in _SWITCH:
        raise ValueError
    return _SWITCH[text.lower()]


def _whole(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)  # ValueError for '1.5', 'abc'; Python's own limit for huge digit strings
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


def _seconds(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        # nan and inf parse as floats but are no durations
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise ValueError
        return value

    return parse


def _worker_id(text: str) -> str:
    if not _WORKER_ID.fullmatch(text):
        raise ValueError
    return text


def _path(text: str) -> str:
    if "\0" in text:  # the only byte no path can hold
        raise ValueError
    return text


def _token(text: str) -> str:
    if not 1 <= len(text) <= 512 or not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError
    return text


def _cache_folder(text: str) -> str | None:
    return None if text.lower() == "off" else _path(text)


_DAY = 86400.0

SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting(
            "SDGEN_DATA",
            _path,
            "data",
            "a folder path",
            "the data directory (spool, outputs, caches) when there is no --data",
            "./data",
        ),
        Setting(
            "SDGEN_PRECISION",
            _choice(*PRECISIONS),
            None,
            "one of " + ", ".join(PRECISIONS),
            "the model's dtype policy; mixed_ ones keep float32 weights",
            "bfloat16 on a GPU, float32 on the CPU",
        ),
        Setting(
            "SDGEN_ATTENTION",
            _choice("fused", "stock"),
            "fused",
            "fused or stock",
            "fused: one dot-product-attention op (engine/attention.py); stock: keras-cv's",
        ),
        Setting(
            "SDGEN_SAMPLER",
            _choice("fused", "stock"),
            "fused",
            "fused or stock",
            "fused: the whole denoising loop as one compiled function; stock: keras-cv's generate_image",
        ),
        Setting(
            "SDGEN_SNAPSHOT",
            _switch,
            True,
            "on or off (also 1/0, true/false, yes/no)",
            "on JAX with the fused sampler, workers run from model snapshots instead of building keras models",
        ),
        Setting(
            "SDGEN_JIT",
            _switch,
            None,
            "on or off (also 1/0, true/false, yes/no)",
            "compile the models with XLA",
            "on on a GPU, off on the CPU (where XLA is slower)",
        ),
        Setting(
            "SDGEN_MAX_BATCH",
            _whole(1, LARGEST_BATCH),
            LARGEST_BATCH,
            f"a whole number from 1 to {LARGEST_BATCH}",
            "most images per forward pass (also cut to what fits the GPU's memory)",
        ),
        Setting(
            "SDGEN_GROUP_IMAGES",
            _whole(0, 1024),
            None,
            "a whole number from 0 to 1024",
            "images of one request's small tickets a worker runs as one batch (0 or 1: no grouping)",
            "16 on a GPU, 1 on the CPU and for the dry-run engine",
        ),
        Setting(
            "SDGEN_COMPILE_CACHE",
            _cache_folder,
            "",
            "a folder path, or off",
            "JAX's persistent compilation cache, shared by the workers",
            "DATA/cache/jax",
        ),
        Setting(
            "SDGEN_DRY_RUN_DELAY",
            _seconds(0, _DAY),
            0.0,
            "a number of seconds from 0 to 86400",
            "seconds the dry-run engine spends on each image (stands in for generation time)",
            "0",
        ),
        Setting(
            "SDGEN_SYSTEM_METRICS",
            _switch,
            False,
            "on or off (also 1/0, true/false, yes/no)",
            "workers sample CPU, memory and GPU use into each ticket's MLflow run (daemon --system-metrics)",
        ),
        Setting(
            "SDGEN_TRACKING",
            _switch,
            True,
            "on or off (also 1/0, true/false, yes/no)",
            "the daemon logs requests and tickets to MLflow (off: as --no-tracking)",
        ),
        Setting(
            "SDGEN_WORKER_ID",
            _worker_id,
            None,
            "1 to 128 letters, digits and . _ @ : + - (starting with a letter or digit)",
            "the id a worker writes into its leases (launchers set it)",
            "host-pid-random",
        ),
        Setting(
            "SDGEN_IDLE_EXIT",
            _seconds(0, low_open=True),
            defaults.WORKER_IDLE_EXIT_SECONDS,
            "a number of seconds above 0",
            "a worker exits after the spool was idle this long (as worker --idle-exit; launchers set it)",
        ),
        Setting(
            "SDGEN_HEARTBEAT",
            _seconds(0, low_open=True),
            defaults.HEARTBEAT_SECONDS,
            "a number of seconds above 0",
            "seconds between a worker's lease renewals (as worker --heartbeat; launchers set it)",
        ),
        Setting(
            "ADSP_WORKER_MAX",
            _whole(1, 1000),
            1,
            "a whole number from 1 to 1000",
            "most ADSP jobs at once when the daemon has no --workers",
        ),
        Setting(
            "SDGEN_WEB_TOKEN",
            _token,
            None,
            "1 to 512 printable characters, no spaces",
            "`sdgen web` takes writes only with this token (as --token); without one, only on loopback",
            "none",
        ),
    ]
}


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of one declared setting, read from the environment now."""
    env = os.environ if environ is None else environ
    return SETTINGS[name].value(env.get(name))


def check(environ: Mapping[str, str] | None = None) -> None:
    """Every setting parsed; the first bad one (in declaration order) raised with the names
    of any others, so that one try names every problem and the line stays short."""
    env = os.environ if environ is None else environ
    errors = []
    for setting in SETTINGS.values():
        try:
            setting.value(env.get(setting.name))
        except SettingError as e:
            errors.append((setting.name, str(e)))
    if errors:
        more = f" (also bad: {', '.join(name for name, _ in errors[1:])})" if len(errors) > 1 else ""
        raise SettingError(errors[0][1] + more)


def table() -> str:
    """The settings as a Markdown table (the README's "Settings" section is this)."""
    rows = ["| Variable | Values | Default | What it does |", "|---|---|---|---|"]
    for s in SETTINGS.values():
        default = s.shown_default or (("on" if s.default else "off") if isinstance(s.default, bool) else str(s.default))
        rows.append(f"| `{s.name}` | {s.allowed} | {default} | {s.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m sdgen.settings: the table for the README
    print(table())
