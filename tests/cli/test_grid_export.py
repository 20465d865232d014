"""`sdgen grid` and `sdgen export` as a person runs them: the files they write, what they
print, and one-line errors (exit 2) for every bad input."""

import tarfile

from PIL import Image

from tests.conftest import DRY, accept, generate, sdgen

RID = "20261126-000000-aaaaaa"
SWEEP = DRY + "prompt: a fox\nimages: 2\nseed: 3\nsweep: {guidance: [5, 9], steps: [2, 3], size: [128x128, 256x128]}\n"


def one_line_error(proc, text):
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert text in proc.stderr, proc.stderr


def test_grid_writes_one_png_per_third_field_value(data, spool, tmp_path):
    generate(spool, SWEEP.replace("width: 128\nheight: 128\n", ""), RID)
    out = tmp_path / "g.png"
    proc = sdgen(data, "grid", RID, "--x", "steps", "--out", out, check=True)
    assert "g-128x128.png: 2 x 2 cells (x: steps, y: guidance, size=128x128)" in proc.stdout
    assert "the other fields stay at their first value: image 0" in proc.stdout
    sizes = [Image.open(tmp_path / f"g-{v}.png").size for v in ("128x128", "256x128")]
    assert sizes[0] == sizes[1] and not out.exists()


def test_grid_and_export_errors_are_one_line(data, spool, tmp_path):
    one_line_error(sdgen(data, "grid", "20261126-000000-cccccc"), "unknown request id")
    accept(spool, DRY + "prompt: a\nimages: 2\nseed: 1\n", RID)  # accepted, nothing made yet
    one_line_error(sdgen(data, "grid", RID, "--x", "image", "--y", "seed"), "no finished images yet")
    one_line_error(sdgen(data, "export", RID, "--to", tmp_path / "x"), "no finished images yet")
    generate(spool, DRY + "prompt: a\nimages: 2\nseed: 1\nsweep: {guidance: [5, 9]}\n", "20261126-000000-dddddd")
    one_line_error(sdgen(data, "grid", "20261126-000000-dddddd", "--y", "cfg"), "unknown field 'cfg' for --y")
    generate(spool, DRY + "prompt: b\nimages: 2\nseed: 1\n", "20261126-000000-eeeeee")
    one_line_error(sdgen(data, "grid", "20261126-000000-eeeeee"), "no sweep: name the axes")
    assert sdgen(data, "grid", "20261126-000000-eeeeee", "--x", "image", "--out", tmp_path / "p.png").returncode == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    one_line_error(sdgen(data, "export", "20261126-000000-eeeeee", "--to", tmp_path / "full"), "is not empty")
    one_line_error(sdgen(data, "export", "20261126-000000-eeeeee", "--to", data / "x"), "inside the data directory")
    one_line_error(sdgen(data, "export", RID, "--to", tmp_path / "y", "--format", "zip"), "invalid choice")


def test_export_prints_what_it_wrote(data, spool, tmp_path):
    generate(spool, DRY + "prompt: b\nimages: 3\nseed: 1\n", RID)
    proc = sdgen(data, "export", RID, "--to", tmp_path / "wds", "--format", "webdataset", check=True)
    assert proc.stdout.startswith(f"{tmp_path / 'wds'}: 3 images from 1 requests (1 shards), ")
    with tarfile.open(tmp_path / "wds" / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 6
    proc = sdgen(data, "export", RID, "--to", tmp_path / "hf", check=True)
    assert "3 images from 1 requests (3 hard-linked, 0 copied)" in proc.stdout
    assert (tmp_path / "hf" / RID / "0000-000000-1.png").stat().st_nlink == 2
