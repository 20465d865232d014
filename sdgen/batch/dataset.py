"""Output folders as datasets: `metadata.jsonl` in the Hugging Face `imagefolder` layout,
kept up to date by the workers, and `sdgen export` of several requests as one imagefolder
or as webdataset tar shards.

One row per image: `file_name` (relative to the folder holding metadata.jsonl) and the
columns a request names (prompt, negative_prompt, seed, steps, guidance, width, height,
model, sampler, template, combination) plus where the image sits in the request
(request_id, prompt_index, image_index, combination_index). Every row has every column
with one type, so `datasets` infers one schema for a folder and for an export of many
requests:

* `combination` is a JSON string (`{"guidance": 5.0, "steps": 20}`), null without a sweep.
  Flattened columns (`sweep.guidance`...) would differ from request to request (an export
  of two sweeps would get columns that are null in half the rows, and a swept `size` is a
  string where `width` is a number), and the values a combination sets are already in the
  plain columns (guidance, steps, width...), which are always there.
* `template` is the prompt as written, null when the prompt was no template.
* `guidance` is always a float (a YAML `5` and `7.5` in one sweep must not make pyarrow
  guess int for half a column).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sdgen import defaults
from sdgen.batch.outputs import Finished, accepted_request, finished_images
from sdgen.exceptions import UserError
from sdgen.fsutil import fsync_dir
from sdgen.spool.store import Spool
from sdgen.spool.ticket import ImageSpec, Ticket
from sdgen.textsafe import printable

log = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
FORMATS = ("imagefolder", "webdataset")
# Every image is DDIM until samplers exist (sweep.NOT_YET): the column is there already so
# that datasets made now and later have the same columns.
SAMPLER = "ddim"


def image_row(ticket: Ticket, spec: ImageSpec, file_name: str) -> dict:
    """The metadata.jsonl row of one image of `ticket`."""
    template = ticket.template if ticket.template and ticket.template != ticket.prompt else None
    return {
        "file_name": file_name,
        "prompt": ticket.prompt,
        "negative_prompt": ticket.negative_prompt,
        "seed": spec.seed,
        "steps": ticket.steps,
        "guidance": float(ticket.guidance),
        "width": ticket.width,
        "height": ticket.height,
        "model": ticket.model,
        "sampler": SAMPLER,
        "template": template,
        "combination": json.dumps(ticket.combination, ensure_ascii=False) if ticket.combination else None,
        "combination_index": ticket.combination_index if ticket.combination else None,
        "request_id": ticket.request_id,
        "prompt_index": spec.prompt_index,
        "image_index": spec.image_index,
    }


def _line(row: dict) -> bytes:
    # ensure_ascii keeps a line one line whatever the prompt holds (U+2028 and such)
    return (json.dumps(row, ensure_ascii=True) + "\n").encode()


# -- metadata.jsonl in an output folder, appended to by the workers ----------------------------
# The index.csv way (every writer renames a whole new copy into place) works there because
# every writer writes the same bytes. metadata.jsonl grows by each ticket's images: a rename
# would drop the lines another worker added in between. So lines are appended (O_APPEND, one
# write per ticket) under an exclusive flock on the file itself, which also serializes
# workers on other hosts over NFS (Linux maps flock to NFS locks); the threads of one worker
# (a group's tickets are written side by side) take a process lock first, as flock over NFS
# does not exclude a process from itself.
_THREADS = threading.Lock()


def append_metadata(folder: Path, rows: list[dict], dedupe: bool = False) -> int:
    """Append `rows` to `folder`/metadata.jsonl; how many were written. With `dedupe`
    (a retried ticket: an earlier attempt may have written its lines before dying), rows
    whose file_name is already there are left out: that reads the whole file, so only then.
    A line cut short by a crash (or a full disk) is cut off before appending: every line of
    the file is a whole JSON line."""
    if not rows:
        return 0
    path = folder / METADATA
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    with _THREADS:
        # outputs/ is shared: a symlink planted at the name is not followed (O_NOFOLLOW)
        fd = os.open(path, flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            locked = _lock(fd, defaults.METADATA_LOCK_SECONDS)
            try:
                size = _whole_lines(path, fd)
                if dedupe:
                    there = _file_names(path)
                    rows = [r for r in rows if r["file_name"] not in there]
                data = b"".join(_line(r) for r in rows)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, size)  # no half line left for the next writer to mend
                    raise
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return len(rows)


def _lock(fd: int, timeout: float) -> bool:
    """An exclusive flock, waited for at most `timeout` seconds. A worker stopped while it
    holds the lock (SIGSTOP, a Slurm suspend) must not stall every other: past the wait the
    lines are appended without it (one O_APPEND write, whole on a local disk)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                log.warning("metadata.jsonl lock busy for %.0fs: appending without it", timeout)
                return False
            time.sleep(0.02)


def _whole_lines(path: Path, fd: int) -> int:
    """The file's size after cutting off a last line that has no newline (a writer died in
    the middle of it)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return size
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
    log.warning("%s: cut off a partial last line (%d bytes)", printable(path), size - keep)
    os.ftruncate(fd, keep)
    return keep


def _file_names(path: Path) -> set[str]:
    names = set()
    with open(path, "rb") as f:
        for line in f:
            try:
                names.add(json.loads(line)["file_name"])
            except (ValueError, KeyError, TypeError):
                continue
    return names


# -- sdgen export ------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    requests: int = 0
    images: int = 0
    linked: int = 0  # hard links (no bytes copied)
    copied: int = 0
    shards: int = 0
    bytes: int = 0  # of the dataset: images + metadata, or the tar shards
    files: tuple[str, ...] = ()  # what was written, relative to the target (shards, metadata)


def gather(spool: Spool, request_ids: list[str]) -> list[tuple[str, list[Finished]]]:
    """Each request's finished images, or a one-line UserError for an unknown request or
    one with no image yet."""
    out = []
    for request_id in dict.fromkeys(request_ids):  # each once, in the order given
        request = accepted_request(spool, request_id)
        images = finished_images(spool, request_id, request)
        if not images:
            raise UserError(f"request {request_id} has no finished images yet: see `sdgen status {request_id}`")
        out.append((request_id, images))
    return out


def export(
    spool: Spool,
    request_ids: list[str],
    to: Path,
    fmt: str = "imagefolder",
    shard_bytes: int = defaults.EXPORT_SHARD_BYTES,
) -> ExportSummary:
    """One dataset at `to` from the finished images of several requests. `to` must not
    exist or be an empty folder (an export is never mixed with other files). Written in a
    folder beside it and renamed into place: a crash leaves no half dataset at `to`."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    to = Path(to)
    if to.is_symlink() or (to.exists() and not to.is_dir()):
        raise UserError(f"{to} exists and is not a folder: give a new or empty folder to --to")
    if to.is_dir() and any(to.iterdir()):
        raise UserError(f"{to} is not empty: export into a new or empty folder")
    requests = gather(spool, request_ids)
    to.parent.mkdir(parents=True, exist_ok=True)
    work = to.with_name(f".{to.name}.{uuid.uuid4().hex[:8]}.part")
    work.mkdir()
    try:
        summary = (_imagefolder if fmt == "imagefolder" else _webdataset)(requests, work, shard_bytes)
        summary.requests = len(requests)
        if to.is_dir():
            to.rmdir()  # empty, checked above
        os.rename(work, to)
        fsync_dir(to.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _imagefolder(requests, work: Path, shard_bytes: int) -> ExportSummary:
    """<request id>/<file> for every image (a hard link where the filesystem allows, else a
    copy) and one metadata.jsonl naming them: file names are unique across requests."""
    summary = ExportSummary()
    lines = []
    for request_id, images in requests:
        (work / request_id).mkdir()
        for image in images:
            name = f"{request_id}/{image.path.name}"
            target = work / name
            try:
                os.link(image.path, target, follow_symlinks=False)
                summary.linked += 1
            except OSError:  # another filesystem, or one without hard links
                shutil.copyfile(image.path, target, follow_symlinks=False)
                summary.copied += 1
            summary.bytes += target.stat().st_size
            lines.append(_line(image_row(image.ticket, image.spec, name)))
            summary.images += 1
    data = b"".join(lines)
    (work / METADATA).write_bytes(data)
    summary.bytes += len(data)
    summary.files = (METADATA,)
    return summary


def _tar_size(size: int) -> int:
    """Bytes a member of `size` bytes takes in a tar: a 512-byte header, data padded to 512."""
    return 512 + (size + 511) // 512 * 512


# What closing a tar adds at most: two zero blocks, then padding to a whole record.
_TAR_END = 1024 + tarfile.RECORDSIZE - 1


def _webdataset(requests, work: Path, shard_bytes: int) -> ExportSummary:
    """Tar shards shard-000000.tar, ... of at most `shard_bytes` each (a single sample
    larger than that gets a shard of its own), each sample <key>.png + <key>.json (its
    metadata row). Keys are <request id>_<file stem>: unique across requests, and without
    dots (webdataset splits a member's name at its first dot into key and extension)."""
    summary = ExportSummary()
    shards: list[str] = []
    tar = None
    used = 0
    try:
        for request_id, images in requests:
            for image in images:
                key = f"{request_id}_{image.path.stem}"
                row = image_row(image.ticket, image.spec, image.path.name)
                meta = json.dumps(row, ensure_ascii=True).encode()
                size = image.path.stat().st_size
                need = _tar_size(size) + _tar_size(len(meta))
                if tar is None or (used > 0 and used + need + _TAR_END > shard_bytes):
                    if tar is not None:
                        tar.close()
                    shards.append(f"shard-{len(shards):06d}.tar")
                    tar = tarfile.open(work / shards[-1], "w", format=tarfile.USTAR_FORMAT)
                    used = 0
                _add(tar, f"{key}.png", image.path.read_bytes())
                _add(tar, f"{key}.json", meta)
                used += need
                summary.images += 1
    finally:
        if tar is not None:
            tar.close()
    summary.shards = len(shards)
    summary.files = tuple(shards)
    summary.bytes = sum((work / s).stat().st_size for s in shards)
    return summary


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))
