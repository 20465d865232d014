"""`sdgen cache status|prune`: what the caches of a data directory hold, when each was last
used, and removing what nothing uses any more.

    weights    $KERAS_HOME/datasets, else DATA/cache/keras/datasets (engine/weights.py)
    snapshots  DATA/cache/snapshots/ (engine/snapshot.py): one folder per model, weights,
               precision and software; `<name>.damaged-<time>` set aside by a worker;
               `tmp-*` being written (or left by a writer that died); `<name>.lock`
    jax        $SDGEN_COMPILE_CACHE, else DATA/cache/jax: JAX's compiled programs

`prune` removes snapshots made by other software (an upgrade, an edited sampler) or unused
for --older-than, damaged ones set aside, and JAX's least recently used programs until the
cache is under defaults.JAX_CACHE_MAX_BYTES. Weights cost an hour's download: only with
--weights (then the files unused for --older-than). A snapshot folder is removed only under
its lock, so never while a worker writes it. Lock files stay: they are empty, and removing
one a worker waits on would let two workers write at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sdgen import defaults, settings
from sdgen.config import data_root
from sdgen.engine.weights import STAMPS, cache_dir

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_JAX_SUFFIXES = ("-cache", "-atime")  # JAX's LRU cache: <key>-cache, <key>-atime (when it was last read)


def older_than(text: str) -> float:
    """'30d' -> seconds; an argparse type, so a bad value is sdgen's one-line usage error."""
    match = _AGE.fullmatch(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(
            f"takes a number and a unit, s, m, h, d or w (like 30d or 12h), got {settings.shown(text)}"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Item:
    path: Path
    bytes: int
    last_use: float | None
    note: str = ""


def _files(path: Path):
    if path.is_file():
        yield path
        return
    for folder, _, names in os.walk(path):
        for name in names:
            yield Path(folder) / name


def _stat(path: Path, atime: bool) -> tuple[int, float | None]:
    """Bytes under `path` and its newest use: modification time, or also access time where
    reading is the use (weights) and the filesystem keeps it."""
    total, newest = 0, None
    for f in _files(path):
        try:
            st = f.lstat()
        except FileNotFoundError:  # removed meanwhile
            continue
        total += st.st_size
        used = max(st.st_mtime, st.st_atime) if atime else st.st_mtime
        newest = used if newest is None else max(newest, used)
    return total, newest


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "never used"
    age = max(0.0, now - t)
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= scale:
            return f"last used {age / scale:.0f} {unit} ago"
    return "last used just now"


# -- what is there ------------------------------------------------------------------------------


def weight_dirs(data: Path) -> list[Path]:
    """The weight cache in use, and the data directory's own if KERAS_HOME points elsewhere."""
    dirs = [cache_dir(data)]
    own = data / "cache" / "keras" / "datasets"
    return dirs + [own] if own != dirs[0] and own.is_dir() else dirs


def jax_dir(data: Path) -> Path:
    folder = settings.get("SDGEN_COMPILE_CACHE")
    return Path(folder) if folder else data / "cache" / "jax"  # off: whatever an earlier run left there


def weights(data: Path) -> list[Item]:
    items = []
    for folder in weight_dirs(data):
        if folder.is_dir():
            items += [
                Item(f, *_stat(f, atime=True))
                for f in sorted(folder.iterdir())
                if f.is_file() and f.name != STAMPS and not f.name.endswith(".part")
            ]
    return items


def snapshots(data: Path) -> list[Item]:
    """Every entry of the snapshots folder but lock files, each with what it is."""
    root = data / "cache" / "snapshots"
    try:
        from sdgen.engine import snapshot  # imports jax: only this command's own work needs it
    except ImportError:  # `make run` installs no jax: list, never judge (prune then keeps them)
        return [
            Item(e, *_stat(e, atime=False), note="not judged: jax is not installed (pip install -e '.[jax-gpu]')")
            for e in (sorted(root.iterdir()) if root.is_dir() else [])
            if not e.name.endswith(".lock")
        ]
    now, software = time.time(), snapshot.software()
    items = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name.endswith(snapshot.LOCK):
            continue
        size, newest = _stat(entry, atime=False)
        item = Item(entry, size, newest)
        if snapshot.DAMAGED in entry.name:
            item.note = "damaged, set aside"
        elif entry.name.startswith("tmp-"):
            item.note = (
                "left by a writer that died"
                if now - (newest or 0) > defaults.SNAPSHOT_STALE_TMP_SECONDS
                else "being written"
            )
        else:
            stamp = entry / snapshot.LAST_USED
            item.last_use = stamp.stat().st_mtime if stamp.exists() else newest
            try:
                ident = json.loads((entry / "meta.json").read_text())["identity"]
                item.note = "current" if snapshot.is_current(ident, software) else "made by other software"
            except (OSError, ValueError, KeyError, TypeError):
                item.note = "damaged"
            inner = list(entry.glob(f"*{snapshot.DAMAGED}*"))
            if inner:
                item.note += f", {len(inner)} damaged program(s) set aside"
        items.append(item)
    return items


def jax_entries(data: Path) -> list[Item]:
    """JAX's cache as entries (a program and its access stamp together), oldest use first."""
    folder, groups = jax_dir(data), {}
    for f in _files(folder) if folder.is_dir() else []:
        if f.name.startswith("."):  # JAX's own lock file
            continue
        key = next((str(f)[: -len(s)] for s in _JAX_SUFFIXES if f.name.endswith(s)), str(f))
        groups.setdefault(key, []).append(f)
    items = []
    for key, files in groups.items():
        sizes = [_stat(f, atime=False) for f in files]
        items.append(
            Item(
                Path(key),
                sum(s for s, _ in sizes),
                max((t for _, t in sizes if t), default=None),
                note=" ".join(sorted(f.name for f in files)),
            )
        )
    return sorted(items, key=lambda i: i.last_use or 0)


# -- commands -----------------------------------------------------------------------------------


def _summary(label: str, where: str, items: list[Item], now: float, extra: str = "") -> str:
    total = sum(i.bytes for i in items)
    newest = max((i.last_use for i in items if i.last_use), default=None)
    what = (
        f"{_size(total)} in {len(items)} {'entry' if len(items) == 1 else 'entries'}, {_ago(newest, now)}"
        if items
        else "empty"
    )
    return f"{label:10} {where}: {what}{extra}"


def cmd_status(args: argparse.Namespace) -> int:
    data, now = data_root(args.data), time.time()
    items = weights(data)
    print(_summary("weights", ", ".join(str(d) for d in weight_dirs(data)), items, now))
    for i in items:
        print(f"  {i.path.name:50} {_size(i.bytes):>9}  {_ago(i.last_use, now)}")
    items = snapshots(data)
    print(_summary("snapshots", str(data / "cache" / "snapshots"), items, now))
    for i in items:
        print(f"  {i.path.name:50} {_size(i.bytes):>9}  {_ago(i.last_use, now)}  {i.note}")
    off = " (SDGEN_COMPILE_CACHE=off)" if settings.get("SDGEN_COMPILE_CACHE") is None else ""
    print(
        _summary(
            "jax cache",
            str(jax_dir(data)),
            jax_entries(data),
            now,
            f"; prune keeps it under {_size(defaults.JAX_CACHE_MAX_BYTES)}{off}",
        )
    )
    return 0


def _doomed(data: Path, age: float, with_weights: bool, now: float) -> list[tuple[Item, str]]:
    doomed = []
    for item in snapshots(data):
        old = item.last_use is not None and now - item.last_use > age
        if item.note.startswith("damaged"):
            doomed.append((item, item.note))
        elif item.note == "left by a writer that died":
            doomed.append((item, item.note))
        elif item.note.startswith("made by other software"):
            doomed.append((item, "made by other software"))
        elif item.note.startswith("current") and old:
            doomed.append((item, f"unused for {(now - item.last_use) / 86400:.0f} d"))
        elif "damaged program" in item.note:
            for p in item.path.glob("*.damaged-*"):
                doomed.append((Item(p, *_stat(p, atime=False)), "damaged program, set aside"))
    entries = jax_entries(data)
    total = sum(i.bytes for i in entries)
    for item in entries:  # least recently used first
        if total <= defaults.JAX_CACHE_MAX_BYTES:
            break
        doomed.append((item, f"JAX cache over {_size(defaults.JAX_CACHE_MAX_BYTES)}"))
        total -= item.bytes
    if with_weights:
        doomed += [
            (i, f"unused for {(now - i.last_use) / 86400:.0f} d")
            for i in weights(data)
            if i.last_use is not None and now - i.last_use > age
        ]
    return doomed


def _remove(item: Item, jax_files: bool) -> bool:
    """Remove one item; a snapshot folder only under its lock (False: a worker holds it)."""
    if jax_files:
        for suffix in _JAX_SUFFIXES:
            Path(f"{item.path}{suffix}").unlink(missing_ok=True)
        item.path.unlink(missing_ok=True)
        return True
    if item.path.is_dir() and not item.path.name.startswith("tmp-") and ".damaged-" not in item.path.name:
        from filelock import FileLock, Timeout

        from sdgen.engine import snapshot

        lock = FileLock(str(snapshot.lock_path(item.path)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        try:
            shutil.rmtree(item.path)
        finally:
            lock.release()
        return True
    if item.path.is_dir():
        shutil.rmtree(item.path)
    else:
        item.path.unlink(missing_ok=True)
    return True


def cmd_prune(args: argparse.Namespace) -> int:
    data, now = data_root(args.data), time.time()
    age = defaults.CACHE_UNUSED_SECONDS if args.older_than is None else args.older_than
    jax_root = jax_dir(data)
    freed = 0
    doomed = _doomed(data, age, args.weights, now)
    for item, why in doomed:
        shown = item.path.name if item.path.parent != jax_root else f"jax cache entry {item.path.name}"
        if args.dry_run:
            print(f"would remove {shown} ({_size(item.bytes)}: {why})")
        elif _remove(item, jax_files=item.path.parent == jax_root):
            print(f"removed {shown} ({_size(item.bytes)}: {why})")
        else:
            print(f"kept {shown}: a worker is writing it")
            continue
        freed += item.bytes
    if not doomed:
        print("nothing to remove")
    else:
        print(f"{'would free' if args.dry_run else 'freed'} {_size(freed)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache", help="sizes and last use of weights, snapshots and the JAX cache; prune them")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("status", help="each cache with its size and last use")
    s.set_defaults(func=cmd_status)
    r = csub.add_parser("prune", help="remove old or damaged snapshots, bound the JAX cache (weights: --weights)")
    r.add_argument(
        "--older-than",
        type=older_than,
        metavar="AGE",
        help=f"unused this long goes, e.g. 30d, 12h (default {defaults.CACHE_UNUSED_SECONDS / 86400:.0f}d)",
    )
    r.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    r.add_argument("--weights", action="store_true", help="also remove weight files unused for --older-than")
    r.set_defaults(func=cmd_prune)
