"""PNG metadata: `sdgen show` reads it and `sdgen submit --from` makes the same image again."""

import json

import yaml
from PIL import Image

from sdgen.spool.request import parse_request
from sdgen.worker.loop import Worker
from tests.conftest import sdgen

RID = "20261126-000000-aaaaaa"


def make_images(spool):
    spool.accept(
        RID,
        parse_request(
            "prompt: a fox\nnegative_prompt: fog\nimages: 2\nbatch_size: 2\n"
            "seed: 40\nengine: dry-run\nwidth: 128\nheight: 256\nsteps: 7\n"
            "guidance: 3\n"
        ),
        source="t",
        now=0.0,
    )
    Worker(spool, "w1").step()
    return spool.layout.output_dir(RID) / "0000-000001-41.png"


def test_pngs_carry_parameters_and_sdgen_metadata(spool):
    png = make_images(spool)
    text = Image.open(png).text
    assert text["parameters"] == (
        "a fox\nNegative prompt: fog\nSteps: 7, Sampler: DDIM, CFG scale: 3, Seed: 41, Size: 128x256, Model: sd-v1"
    )
    meta = json.loads(text["sdgen"])
    assert (meta["request_id"], meta["image_index"], meta["seed"], meta["engine"]) == (RID, 1, 41, "dry-run")
    assert "test pattern" in meta["note"]


def test_show_and_submit_from_an_image(spool):
    png = make_images(spool)
    data = spool.layout.root
    shown = json.loads(sdgen(data, "show", "--json", str(png), check=True).stdout)
    assert shown["seed"] == 41 and shown["prompt"] == "a fox"
    request_id = sdgen(data, "submit", "--from", str(png), check=True).stdout.strip()
    again = parse_request((spool.layout.inbox / f"{request_id}.yaml").read_text())
    assert (
        again.prompts,
        again.negative_prompt,
        again.seed,
        again.images,
        again.steps,
        again.width,
        again.height,
        again.guidance,
    ) == (("a fox",), "fog", 41, 1, 7, 128, 256, 3.0)
    # options override the image's values
    rid2 = sdgen(data, "submit", "--from", str(png), "--images", "4", check=True).stdout.strip()
    assert yaml.safe_load((spool.layout.inbox / f"{rid2}.yaml").read_text())["images"] == 4


def test_show_refuses_other_files(tmp_path):
    other = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(other)
    proc = sdgen(tmp_path / "data", "show", str(other))
    assert proc.returncode == 2 and "carries no sdgen metadata" in proc.stderr


def _png_with_sdgen(path, meta) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("sdgen", json.dumps(meta))
    info.add_itxt("parameters", "a \x1b]0;owned\x07 fox\nSteps: 1, Sampler: x, Seed: 1")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def test_show_and_from_end_in_one_line_on_crafted_files(tmp_path, spool):
    import os

    png = make_images(spool)
    meta = json.loads(Image.open(png).text["sdgen"])
    data = spool.layout.root
    bad = tmp_path / "bad.png"
    _png_with_sdgen(bad, meta | {"steps": "many"})
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(png.read_bytes()[:100])
    for path, why in (
        (bad, "steps is a str"),
        (fifo, "not a regular file"),
        (tmp_path, "is a directory"),
        (tmp_path / "none.png", "does not exist"),
        (trunc, "truncated"),
    ):
        for args in (("show", str(path)), ("submit", "--from", str(path))):
            proc = sdgen(data, *args, timeout=30)
            assert proc.returncode == 2 and why in proc.stderr, (args, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    # values of the right type but out of range go through the request's own validation
    _png_with_sdgen(bad, meta | {"steps": -3})
    proc = sdgen(data, "submit", "--from", str(bad))
    assert proc.returncode == 2 and "--steps" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_show_prints_no_control_characters(tmp_path, spool):
    png = make_images(spool)
    meta = json.loads(Image.open(png).text["sdgen"])
    crafted = tmp_path / "c.png"
    _png_with_sdgen(crafted, meta | {"prompt": "fox\x1b[2J\u202eevil", "note": "\x9b31m"})
    out = sdgen(spool.layout.root, "show", str(crafted), check=True).stdout
    assert "\x1b" not in out and "\u202e" not in out and "\x9b" not in out and "\x07" not in out
    assert "fox\\x1b[2J\\u202eevil" in out and "\\x1b]0;owned\\x07" in out
