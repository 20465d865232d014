"""`sdgen submit` as users run it: one-line errors, concurrent submits, and the CLI as a process."""

import json
import multiprocessing as mp

import yaml

from sdgen.spool.request import parse_request
from sdgen.spool.store import Spool
from tests.conftest import sdgen


def test_submit_prints_an_id_and_publishes_to_the_inbox(data):
    proc = sdgen(
        data,
        "submit",
        "--prompt",
        "a red fox",
        "--total-batch-size",
        "10",
        "--per-worker-batch-size",
        "3",
        "--engine",
        "dry-run",
        "--seed",
        "5",
        check=True,
    )
    request_id = proc.stdout.strip()
    body = yaml.safe_load((data / "spool" / "inbox" / f"{request_id}.yaml").read_text())
    assert body["prompt"] == "a red fox" and body["images"] == 10 and body["batch_size"] == 3
    assert body["seed"] == 5


def test_submit_fixes_a_seed_when_none_is_given(data):
    request_id = sdgen(data, "submit", "--prompt", "x", check=True).stdout.strip()
    body = yaml.safe_load((data / "spool" / "inbox" / f"{request_id}.yaml").read_text())
    assert isinstance(body["seed"], int)


def test_submit_a_file(data, tmp_path):
    f = tmp_path / "my request (1).yaml"
    f.write_text("prompts: [a, b]\nimages: 2\n")
    request_id = sdgen(data, "submit", str(f), check=True).stdout.strip()
    assert parse_request((data / "spool" / "inbox" / f"{request_id}.yaml").read_text()).images_total == 4


def test_bad_input_is_one_line_without_traceback(data, tmp_path):
    cases = [
        (["submit", "--prompt", "x", "--width", "320"], "--width 320 is not a multiple of 128: use 256 or 384"),
        (["submit", "--prompt", "x", "--batch-size", "0"], "--batch-size must be from 1 to 64"),
        (["submit", "--images", "3"], "missing --prompt"),
        (["submit", "--prompt", "x", "--images", "many"], "invalid int value"),
        (["submit", str(tmp_path / "nope.yaml")], "does not exist"),
        (["status", "20261126-000000-abcdef"], "unknown request id"),
        (["cancel", "not-an-id"], "is not a request id"),
    ]
    for args, expected in cases:
        proc = sdgen(data, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _submit_many(root, worker, n):
    spool = Spool(root).ensure()
    ids = []
    for i in range(n):
        ids.append((spool.submit(parse_request(f"prompt: p{worker}-{i}\nseed: {i}\n")), f"p{worker}-{i}"))
    return ids


def test_concurrent_submits_lose_nothing(data):
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_submit_many, [(data, w, 40) for w in range(4)])
    submitted = dict(pair for part in results for pair in part)
    assert len(submitted) == 160  # ids never collide
    inbox = data / "spool" / "inbox"
    on_disk = {p.stem: parse_request(p.read_text()).prompts[0] for p in inbox.glob("*.yaml")}
    assert on_disk == submitted  # every request there, none mixed up
    assert list((data / "spool" / "tmp").iterdir()) == []


def test_the_cli_as_its_own_process_smoke(data):
    """Most CLI tests call main(argv) in-process (tests/conftest.py); this one runs the
    installed entry point as a process, as a user does."""
    rid = sdgen(data, "submit", "--prompt", "a fox", "--engine", "dry-run", subprocess=True, check=True).stdout.strip()
    out = sdgen(data, "status", "--json", subprocess=True, check=True)
    assert [r["id"] for r in json.loads(out.stdout)] == [rid]
    bad = sdgen(data, "submit", "--prompt", "a", "--steps", "0", subprocess=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
