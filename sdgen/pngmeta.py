"""What every PNG says about itself: the A1111-style `parameters` text chunk that many tools
read, and an `sdgen` JSON chunk with everything needed to make the same image again.

The `parameters` chunk is for other tools, so it is written to read back exactly through
A1111's parser (prompt line, `Negative prompt:` line, a last line of `Key: value` pairs):
prompts go on one line each, and values that could split or add pairs are quoted the way
A1111 quotes them. The exact text stays in the `sdgen` chunk, which is what `sdgen show`
and `sdgen submit --from` read.

`read_meta` reads PNGs given by users: anything may be there, so it parses the chunks
itself (no pixel decoding, so no decompression bombs), bounds every size, and checks the
`sdgen` chunk's fields before anyone uses them.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import zlib
from pathlib import Path

from PIL import PngImagePlugin

from sdgen import __version__
from sdgen.batch.sweep import describe
from sdgen.exceptions import UserError
from sdgen.spool.ticket import ImageSpec, Ticket

SDGEN_KEY = "sdgen"
NEGATIVE = "Negative prompt:"
MAX_PNG_BYTES = 64 * 1024 * 1024  # far above any image sdgen writes (512x512 is < 1 MiB)
MAX_TEXT_BYTES = 1024 * 1024  # one text chunk, decompressed (PIL's own limit too)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_SURROGATE = re.compile("[\ud800-\udfff]")


def one_line(text: str) -> str:
    """A prompt as the `parameters` chunk holds it: every run of whitespace (newlines
    included) one space, none at the ends (A1111 strips each line); and never starting
    with `Negative prompt:`, which would make it read as the negative prompt."""
    line = " ".join(_SURROGATE.sub("\ufffd", text).split())
    if line.startswith(NEGATIVE):
        line = "Negative prompt :" + line[len(NEGATIVE) :]
    return line


def quote(value) -> str:
    """A value of the last line, quoted when it could end early, add a `, Key: value`
    pair, lose its ends to the parser's stripping, or be read as quoted: then a JSON
    string, which is how A1111 quotes and unquotes."""
    text = str(value)
    if not text or text != text.strip() or any(c in text for c in ',:"\n\r') or text != one_line(text):
        return json.dumps(text)
    return text


def parameters_fields(ticket: Ticket, spec: ImageSpec) -> dict[str, str]:
    """The fields of the `parameters` chunk, as an A1111-style parser reads them back. A
    batch program's image adds the template its prompt was expanded from and its sweep
    combination (A1111's own parser keeps pairs it does not know)."""
    program = {}
    if ticket.template and ticket.template != ticket.prompt:
        program["Template"] = one_line(ticket.template)
    if ticket.combination:
        program["Combination"] = describe(ticket.combination)
    return {
        "Prompt": one_line(ticket.prompt),
        "Negative prompt": one_line(ticket.negative_prompt or ""),
        "Steps": str(ticket.steps),
        "Sampler": "DDIM",
        "CFG scale": f"{ticket.guidance:g}",
        "Seed": str(spec.seed),
        "Size": f"{ticket.width}x{ticket.height}",
        "Model": str(ticket.model),
        **program,
    }


def parameters_text(ticket: Ticket, spec: ImageSpec) -> str:
    fields = parameters_fields(ticket, spec)
    lines = [fields.pop("Prompt")]
    negative = fields.pop("Negative prompt")
    if negative:
        lines.append(f"{NEGATIVE} {negative}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def sdgen_meta(ticket: Ticket, spec: ImageSpec, engine_info: dict) -> dict:
    meta = {
        "schema": 1,
        "request_id": ticket.request_id,
        "ticket": ticket.name,
        "prompt_index": spec.prompt_index,
        "image_index": spec.image_index,
        "seed": spec.seed,
        "prompt": ticket.prompt,
        "negative_prompt": ticket.negative_prompt,
        "steps": ticket.steps,
        "guidance": ticket.guidance,
        "width": ticket.width,
        "height": ticket.height,
        "model": ticket.model,
        "weights": ticket.weights,
        "engine": ticket.engine,
        "sdgen": __version__,
        **engine_info,
    }
    # batch programs: what `sdgen show` prints and `sdgen submit --from` makes again
    if ticket.template:
        meta["template"] = ticket.template
    if ticket.combination:
        meta["combination"] = dict(ticket.combination)
        meta["combination_index"] = ticket.combination_index
    if ticket.weights == "random":
        meta["note"] = "random weights: this image is noise, not a model output"
    if ticket.engine == "dry-run":
        meta["note"] = "dry-run engine: a test pattern, not a model output"
    return meta


def png_info(ticket: Ticket, spec: ImageSpec, engine_info: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", parameters_text(ticket, spec))
    info.add_itxt(SDGEN_KEY, json.dumps(sdgen_meta(ticket, spec, engine_info), sort_keys=True))
    return info


# -- reading ------------------------------------------------------------------------------

# Fields of the sdgen chunk that are used (`--from`, `show`): name -> accepted types.
# bool is excluded from the numbers on purpose (JSON true is not a step count).
_FIELDS = {
    "prompt": (str,),
    "negative_prompt": (str, type(None)),
    "steps": (int,),
    "guidance": (int, float),
    "width": (int,),
    "height": (int,),
    "model": (str,),
    "weights": (str,),
    "engine": (str,),
    "seed": (int,),
}
_OPTIONAL = {
    "request_id": (str,),
    "ticket": (str,),
    "prompt_index": (int,),
    "image_index": (int,),
    "schema": (int,),
    "template": (str,),
    "combination": (dict,),
    "combination_index": (int,),
}


def _read_file(path: Path) -> bytes:
    """The file's bytes, refusing what is not a regular file of a sane size. Opened with
    O_NONBLOCK so a FIFO cannot hang us, and checked on the open descriptor (fstat), so
    the file cannot be swapped between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: give the path of a PNG image made by sdgen") from None
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied): check its permissions") from None
    except OSError as e:
        raise UserError(f"{path} cannot be opened ({e.strerror or e}): give a PNG image made by sdgen") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{path} is a directory: give the path of a PNG image made by sdgen")
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path} is not a regular file: give the path of a PNG image made by sdgen")
        if st.st_size > MAX_PNG_BYTES:
            raise UserError(
                f"{path} is {st.st_size} bytes, more than any sdgen image "
                f"({MAX_PNG_BYTES // 2**20} MiB at most): is it the right file?"
            )
        chunks, size = [], 0
        while size <= MAX_PNG_BYTES:  # the file may grow while we read: bound it again
            block = os.read(fd, 1 << 20)
            if not block:
                break
            chunks.append(block)
            size += len(block)
        if size > MAX_PNG_BYTES:
            raise UserError(f"{path} is more than {MAX_PNG_BYTES // 2**20} MiB: is it the right file?")
        return b"".join(chunks)
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_TEXT_BYTES + 1)
    if len(out) > MAX_TEXT_BYTES or d.unconsumed_tail:
        raise ValueError("a compressed text chunk is too large")
    return out


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk; ValueError (or zlib.error) if damaged."""
    key, sep, rest = data.partition(b"\0")
    if not sep:
        raise ValueError("a text chunk has no keyword")
    keyword = key.decode("latin-1")
    if kind == b"tEXt":
        return keyword, rest.decode("latin-1")
    if kind == b"zTXt":
        if rest[:1] != b"\0":
            raise ValueError("a zTXt chunk has an unknown compression method")
        return keyword, _inflate(rest[1:]).decode("latin-1")
    if len(rest) < 2:
        raise ValueError("an iTXt chunk is cut short")
    compressed, method, rest = rest[0], rest[1], rest[2:]
    _lang, sep1, rest = rest.partition(b"\0")
    _translated, sep2, text = rest.partition(b"\0")
    if not (sep1 and sep2):
        raise ValueError("an iTXt chunk is cut short")
    if compressed:
        if method != 0:
            raise ValueError("an iTXt chunk has an unknown compression method")
        text = _inflate(text)
    return keyword, text.decode("utf-8")


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG file's bytes (first of each keyword wins), without decoding
    any pixels. ValueError says what is wrong with a file that is not a sound PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG image")
    text: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ValueError("the PNG image is truncated")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length + 4
        if length > 2**31 - 1 or end > len(data):
            raise ValueError("the PNG image is truncated or has a damaged chunk")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"the PNG image is damaged (bad checksum of a {kind!r} chunk)")
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            try:
                keyword, value = _text_chunk(kind, body)
            except (zlib.error, UnicodeDecodeError) as e:
                raise ValueError(f"a text chunk is damaged ({type(e).__name__})") from None
            text.setdefault(keyword, value)
        if kind == b"IEND":
            return text
        pos = end


def _check_fields(meta) -> str | None:
    """What is wrong with the sdgen chunk's object, or None."""
    if not isinstance(meta, dict):
        return "it is not a JSON object"
    for table, required in ((_FIELDS, True), (_OPTIONAL, False)):
        for key, types in table.items():
            if key not in meta:
                if required:
                    return f"{key} is missing"
                continue
            value = meta[key]
            if isinstance(value, bool) or not isinstance(value, types):
                return f"{key} is a {type(value).__name__}, not a {' or '.join(t.__name__ for t in types)}"
            if isinstance(value, float) and not math.isfinite(value):
                return f"{key} is not a finite number"
    combination = meta.get("combination", {})
    if not all(
        isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
        for k, v in combination.items()
    ):
        return "combination is not a mapping of field names to plain values"
    return None


def read_meta(path: Path) -> dict:
    """The sdgen chunk of a PNG (its fields type-checked), plus the `parameters` text, or a
    UserError that says in one line why there is none."""
    data = _read_file(Path(path))
    try:
        text = png_text(data)
    except ValueError as e:
        raise UserError(f"{path}: {e}: give a PNG image made by sdgen") from None
    if SDGEN_KEY not in text:
        raise UserError(f"{path} carries no sdgen metadata (was it made by sdgen?)")
    try:
        meta = json.loads(text[SDGEN_KEY])
    except (ValueError, RecursionError):
        raise UserError(f"{path}: its sdgen metadata is not valid JSON (was the file edited?)") from None
    problem = _check_fields(meta)
    if problem:
        raise UserError(f"{path}: its sdgen metadata is damaged: {problem} (was the file edited?)")
    return meta | {"parameters": text.get("parameters", "")}
