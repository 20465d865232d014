"""metadata.jsonl as the workers write it, loaded by the real `datasets` library; its
appends under concurrency and after a torn write; `export` as imagefolder and webdataset."""

import json
import tarfile
import threading

import datasets
import pytest

from sdgen.batch.dataset import METADATA, append_metadata, export
from sdgen.exceptions import UserError
from sdgen.pngmeta import read_meta
from tests.conftest import DRY, generate

RID, RID2 = "20261126-000000-aaaaaa", "20261126-000000-bbbbbb"
SWEEP = DRY + "prompt: a {red|blue} fox\nimages: 2\nseed: 50\nnegative_prompt: blur\nsweep: {guidance: [5, 9.5]}\n"
COLUMNS = {"prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "model", "sampler"}


def load(folder, tmp_path):
    return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "hf"))


def test_datasets_loads_a_sweeps_output_folder_with_every_column_and_value(spool, tmp_path):
    generate(spool, SWEEP, RID)
    folder = spool.layout.output_dir(RID)
    lines = (folder / METADATA).read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line) for line in lines)
    ds = load(folder, tmp_path)
    assert ds.num_rows == 8
    assert COLUMNS | {"image", "template", "combination"} <= set(ds.column_names)
    by_file = {json.loads(line)["file_name"]: json.loads(line) for line in lines}
    for row in ds:
        meta = read_meta(row["image"].filename)  # the PNG's own record of how it was made
        assert row["image"].size == (128, 128)
        assert by_file[row["image"].filename.rsplit("/", 1)[-1]]["seed"] == row["seed"]
        for key in ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "model"):
            assert row[key] == meta[key], key
        assert row["sampler"] == "ddim" and row["template"] == "a {red|blue} fox"
        assert json.loads(row["combination"]) == {"guidance": row["guidance"]} == meta["combination"]
    assert sorted({row["guidance"] for row in ds}) == [5.0, 9.5]


def test_a_plain_request_loads_too_its_template_and_combination_null(spool, tmp_path):
    generate(spool, DRY + "prompt: a fox\nimages: 3\nseed: 1\n", RID)
    ds = load(spool.layout.output_dir(RID), tmp_path)
    assert ds.num_rows == 3 and COLUMNS <= set(ds.column_names)
    assert {row["template"] for row in ds} == {None} and {row["combination"] for row in ds} == {None}
    assert sorted(row["seed"] for row in ds) == [1, 2, 3]


def rows(names):
    return [{"file_name": n, "prompt": "p"} for n in names]


def test_appends_from_many_threads_stay_whole_lines_and_a_torn_tail_is_cut(tmp_path):
    (tmp_path / METADATA).write_bytes(b'{"file_name": "a.png"}\n{"file_na')  # a writer died mid-line
    threads = [
        threading.Thread(target=append_metadata, args=(tmp_path, rows([f"{t}-{i}.png" for i in range(50)])))
        for t in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [json.loads(line)["file_name"] for line in (tmp_path / METADATA).read_text().splitlines()]
    assert len(names) == 1 + 8 * 50 and len(set(names)) == len(names)
    # a retried ticket's lines are written once
    assert append_metadata(tmp_path, rows(["0-1.png", "new.png"]), dedupe=True) == 1


def test_export_imagefolder_and_webdataset_from_two_requests(spool, tmp_path):
    generate(spool, SWEEP, RID)
    generate(spool, DRY + "prompt: a cat\nimages: 3\nseed: 9\n", RID2)
    out = tmp_path / "set"
    summary = export(spool, [RID, RID2], out)
    assert (summary.images, summary.requests, summary.linked + summary.copied) == (11, 2, 11)
    ds = load(out, tmp_path)
    assert ds.num_rows == 11 and COLUMNS <= set(ds.column_names)
    assert sorted(row["prompt"] for row in ds).count("a cat") == 3
    assert {row["request_id"] for row in ds} == {RID, RID2}
    with pytest.raises(UserError, match="is not empty"):
        export(spool, [RID], out)
    with pytest.raises(UserError, match="unknown request id"):
        export(spool, ["20261126-000000-cccccc"], tmp_path / "other")

    png = spool.layout.output_dir(RID2).joinpath("0000-000000-9.png").stat().st_size
    shards = tmp_path / "shards"
    summary = export(spool, [RID, RID2], shards, "webdataset", shard_bytes=4 * (png + 2048) + 11264)
    assert summary.shards == len(list(shards.glob("shard-*.tar"))) > 1 and summary.images == 11
    keys = []
    for shard in sorted(shards.glob("shard-*.tar")):
        assert shard.stat().st_size <= 4 * (png + 2048) + 11264
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            assert len(names) % 2 == 0
            for name in names[1::2]:
                assert name.endswith(".json") and "." not in name[: -len(".json")]
                keys.append(name[: -len(".json")])
                row = json.load(tar.extractfile(name))
                assert row["request_id"] in (RID, RID2) and row["sampler"] == "ddim"
    assert len(keys) == len(set(keys)) == 11
