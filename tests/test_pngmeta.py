"""PNG metadata as other tools read it (the A1111 `parameters` chunk) and as sdgen reads it
back from files anyone may hand it (`read_meta`)."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from sdgen import pngmeta
from sdgen.exceptions import UserError
from sdgen.spool.ticket import ImageSpec, Ticket

# -- an A1111-style reader, written from the behaviour of A1111's parse_generation_parameters
# (modules/infotext_utils.py): all lines but the last are the prompt until one starts with
# "Negative prompt:"; the last line, if it holds 3 or more `Key: value` pairs, is the pairs;
# quoted values are JSON strings; "WxH" values split into Key-1 / Key-2.
PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE = re.compile(r"^(\d+)x(\d+)$")


def a1111_parse(text: str) -> dict:
    out: dict = {}
    prompt = negative = ""
    in_negative = False
    *lines, last = text.strip().split("\n")
    if len(PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    for key, value in PAIR.findall(last):
        if not value:
            continue  # A1111 fails on value[0] and skips the pair
        if value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        m = SIZE.match(value)
        if m:
            out[f"{key}-1"], out[f"{key}-2"] = m.groups()
        else:
            out[key] = value
    out["Prompt"], out["Negative prompt"] = prompt, negative
    return out


def ticket(prompt="a fox", negative="fog", model="sd-v1", **kw) -> Ticket:
    return Ticket(
        request_id="20261126-000000-aaaaaa",
        index=0,
        priority=0,
        prompt=prompt,
        negative_prompt=negative,
        images=(ImageSpec(0, 0, 41),),
        steps=kw.get("steps", 7),
        width=128,
        height=256,
        guidance=kw.get("guidance", 3.0),
        model=model,
        engine="dry-run",
        weights="random",
    )


def expected(t: Ticket, spec: ImageSpec) -> dict:
    fields = pngmeta.parameters_fields(t, spec)
    w, h = fields.pop("Size").split("x")
    return fields | {"Size-1": w, "Size-2": h}


def test_plain_parameters_are_what_a1111_writes():
    t = ticket()
    assert pngmeta.parameters_text(t, t.images[0]) == (
        "a fox\nNegative prompt: fog\nSteps: 7, Sampler: DDIM, CFG scale: 3, Seed: 41, Size: 128x256, Model: sd-v1"
    )


def test_a_prompt_cannot_forge_a_negative_prompt_or_pairs():
    t = ticket(
        prompt="a fox\nNegative prompt: ugly\nSteps: 1, Seed: 2, Model: x",
        negative="Negative prompt: b",
        model='evil, Seed: 999, Steps: "1"',
    )
    parsed = a1111_parse(pngmeta.parameters_text(t, t.images[0]))
    assert parsed["Prompt"] == "a fox Negative prompt: ugly Steps: 1, Seed: 2, Model: x"
    assert parsed["Negative prompt"] == "Negative prompt : b"
    assert (parsed["Seed"], parsed["Steps"], parsed["Model"]) == ("41", "7", 'evil, Seed: 999, Steps: "1"')


# prompts as anyone may write them: any text, with the characters that matter made likely
TEXT = st.lists(
    st.one_of(
        st.text(max_size=5),
        st.sampled_from(
            [
                "\n",
                "\r",
                ",",
                ":",
                '"',
                "\\",
                " ",
                "\t",
                "\u2028",
                "\x85",
                "\udcff",
                "Negative prompt:",
                "Steps: 1",
                ", Seed: 9",
            ]
        ),
    ),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(prompt=TEXT, negative=TEXT, model=TEXT, steps=st.integers(1, 10**6), guidance=st.floats(0, 100, allow_nan=False))
def test_a1111_reads_back_exactly_what_was_written(prompt, negative, model, steps, guidance):
    t = ticket(prompt, negative, model, steps=steps, guidance=guidance)
    spec = t.images[0]
    text = pngmeta.parameters_text(t, spec)
    assert a1111_parse(text) == expected(t, spec)
    # ... and the prompts written are the given ones, only their whitespace made one space
    fields = pngmeta.parameters_fields(t, spec)
    for given_text, written in ((prompt, fields["Prompt"]), (negative, fields["Negative prompt"])):
        assert written.replace("Negative prompt :", "Negative prompt:", 1) == " ".join(
            pngmeta._SURROGATE.sub("\ufffd", given_text).split()
        )


def test_the_exact_prompt_stays_in_the_sdgen_chunk(tmp_path):
    t = ticket(prompt="line one\nNegative prompt: two\n", negative=" n ")
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=pngmeta.png_info(t, t.images[0], {}))
    meta = pngmeta.read_meta(path)
    assert (meta["prompt"], meta["negative_prompt"]) == (t.prompt, " n ")
    assert a1111_parse(meta["parameters"])["Prompt"] == "line one Negative prompt: two"


# -- read_meta on files anyone may hand it --------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(text: dict | None = None, itxt: dict | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    for k, v in (itxt or {}).items():
        info.add_itxt(k, v)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def good_meta() -> dict:
    t = ticket()
    return pngmeta.sdgen_meta(t, t.images[0], {})


def refused(tmp_path, content: bytes | None, match: str) -> None:
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        pngmeta.read_meta(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        (b"", "not a PNG image"),
        (b"GIF89a" + b"\0" * 50, "not a PNG image"),
        (png_with(itxt={"sdgen": json.dumps(good_meta())})[:60], "truncated"),
        (pngmeta.PNG_SIGNATURE + struct.pack(">I", 2**31 - 1) + b"tEXt", "truncated"),
        (pngmeta.PNG_SIGNATURE + chunk(b"tEXt", b"sdgen\0{}")[:-1] + b"x", "truncated|damaged"),
        (png_with(), "no sdgen metadata"),
        (png_with(text={"sdgen": "not json"}), "not valid JSON"),
        (png_with(text={"sdgen": "[" * 100000 + "]" * 100000}), "not valid JSON"),
        (png_with(text={"sdgen": "[1, 2]"}), "not a JSON object"),
        (png_with(itxt={"sdgen": json.dumps(good_meta() | {"steps": "7"})}), "steps is a str"),
        (png_with(itxt={"sdgen": json.dumps(good_meta() | {"steps": True})}), "steps is a bool"),
        (
            png_with(itxt={"sdgen": json.dumps({k: v for k, v in good_meta().items() if k != "prompt"})}),
            "prompt is missing",
        ),
        (png_with(itxt={"sdgen": json.dumps(good_meta() | {"guidance": float("inf")})}), "not a finite"),
        # a zTXt chunk that inflates to 100 MB: refused at 1 MiB, not inflated
        (
            pngmeta.PNG_SIGNATURE + chunk(b"zTXt", b"sdgen\0\0" + zlib.compress(b" " * 10**8, 9)),
            "text chunk is damaged|too large",
        ),
    ],
)
def test_read_meta_refuses_bad_files_in_one_line(tmp_path, content, match):
    refused(tmp_path, content, match)


def test_read_meta_reads_compressed_and_plain_chunks(tmp_path):
    body = json.dumps(good_meta()).encode()
    data = (
        pngmeta.PNG_SIGNATURE
        + chunk(b"zTXt", b"sdgen\0\0" + zlib.compress(body))
        + chunk(b"iTXt", b"parameters\0\1\0\0\0" + zlib.compress("p \u00e9".encode()))
        + chunk(b"IEND", b"")
    )
    path = tmp_path / "x.png"
    path.write_bytes(data)
    meta = pngmeta.read_meta(path)
    assert meta["prompt"] == "a fox" and meta["parameters"] == "p \u00e9"


def test_a_decompression_bomb_is_never_decoded(tmp_path):
    """A PNG declaring 100000x100000 pixels: read_meta reads chunks only, never pixels."""
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 6, 0, 0, 0)
    body = json.dumps(good_meta()).encode()
    data = (
        pngmeta.PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"sdgen\0" + body)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10**6))
        + chunk(b"IEND", b"")
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    assert pngmeta.read_meta(path)["seed"] == 41


def test_read_meta_refuses_huge_files_without_reading_them(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(pngmeta.MAX_PNG_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(UserError, match="MiB"):
        pngmeta.read_meta(path)


def test_read_meta_never_blocks_on_a_fifo_nor_reads_a_directory(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        pngmeta.read_meta(fifo)  # no writer: a blocking open would hang here
    with pytest.raises(UserError, match="is a directory"):
        pngmeta.read_meta(tmp_path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=2000),
        # mostly-valid PNGs with bytes flipped or cut: the paths past the signature
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(8, 4000)).map(
            lambda a: (lambda b: b[: a[0] % len(b)] + bytes([a[1]]) + b[a[0] % len(b) + 1 : a[2]])(
                png_with(itxt={"sdgen": json.dumps(good_meta()), "parameters": "p"})
            )
        ),
        st.builds(
            lambda kind, key, body: pngmeta.PNG_SIGNATURE + chunk(kind, key + b"\0" + body) + chunk(b"IEND", b""),
            st.sampled_from([b"tEXt", b"zTXt", b"iTXt"]),
            st.sampled_from([b"sdgen", b"parameters"]),
            st.binary(max_size=300),
        ),
    )
)
def test_any_bytes_give_a_result_or_one_line(tmp_path, content):
    path = tmp_path / "any.png"
    path.write_bytes(content)
    try:
        meta = pngmeta.read_meta(path)
    except UserError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert isinstance(meta["prompt"], str) and isinstance(meta["steps"], int)
