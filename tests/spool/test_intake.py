"""Hostile files dropped into the inbox: each is quarantined with a readable reason and
nothing else is touched."""

import os

import pytest

from sdgen.daemon.scheduler import Scheduler

LONG_AGO = 10.0  # seconds: files older than the settle time


def drop(spool, name: str, data: bytes) -> None:
    path = spool.layout.inbox / name
    path.write_bytes(data)
    old = os.stat(path).st_mtime - LONG_AGO
    os.utime(path, (old, old))


def reasons(spool) -> dict[str, str]:
    out = {}
    for p in spool.layout.rejected.iterdir():
        if p.name.endswith(".reason"):
            original = p.name[: -len(".reason")].split("-", 3)[-1]
            out[original] = p.read_text()
    return out


HOSTILE = {
    "bad-syntax.yaml": (b"prompt: [unclosed\n", "invalid YAML at line"),
    "a-list.yaml": (b"- prompt: a\n- prompt: b\n", "must be a YAML mapping"),
    "object-tag.yaml": (
        b"prompt: !!python/object/apply:os.system ['touch /tmp/sdgen-pwned']\n",
        "unsupported YAML tag",
    ),
    "bomb.yaml": (
        b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        b"c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nprompt: x\n",
        "aliases",
    ),
    "huge.yaml": (b"prompt: " + b"x" * (10 * 1024 * 1024) + b"\n", "may be at most 1048576 bytes"),
    "latin1.yaml": (b"prompt: caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 11)"),
    "binary.yaml": (bytes(range(256)) * 4, "is not UTF-8"),
    "empty.yaml": (b"", "is empty"),
    "typo.yaml": (b"prompt: a\nimgaes: 3\n", "unknown key 'imgaes'"),
    "bounds.yml": (b"prompt: a\nwidth: 320\n", "width 320 is not a multiple of 128: use 256 or 384"),
    "..evil..yaml": (b"prompt: a\n", None),  # hidden name: ignored, not read (a file being written)
    "odd$name.yaml": (b"prompt: a\n", "may only use letters, digits"),
    "up..up.yaml": (b"prompt: a\n", "single dots"),
}


def test_hostile_files_are_quarantined_with_reasons(spool, tmp_path):
    outside = tmp_path / "secret.yaml"
    outside.write_bytes(b"prompt: do not touch\n")
    for name, (data, _) in HOSTILE.items():
        drop(spool, name, data)
    os.symlink(outside, spool.layout.inbox / "link.yaml")
    (spool.layout.inbox / "a-dir.yaml").mkdir()
    drop(spool, "good.yaml", b"prompt: fine\nengine: dry-run\n")
    drop(spool, "notes.txt", b"not a request")

    # as many ticks as the 0.3 s intake budget needs on a loaded machine (the files are big)
    sched = Scheduler(spool, launcher=None)
    now = os.stat(spool.layout.inbox).st_mtime + 60
    report = sched.tick(now=now)
    for _ in range(50):
        if not report.waiting_files:
            break
        more = sched.tick(now=now)
        report.accepted += more.accepted
        report.rejected += more.rejected
        report.waiting_files = more.waiting_files

    got = reasons(spool)
    for name, (_, expected) in HOSTILE.items():
        if expected is None:
            assert name not in got and (spool.layout.inbox / name).exists()
            continue
        assert expected in got[name.replace("$", "_")], (name, got.get(name))
        assert "\n" not in got[name.replace("$", "_")].strip()
    assert "symbolic link" in got["link.yaml"]
    assert "not a regular file" in got["a-dir.yaml"]
    # the link was moved, its target untouched; the valid request and other files unaffected
    assert outside.read_bytes() == b"prompt: do not touch\n"
    assert not os.path.exists("/tmp/sdgen-pwned")
    assert len(report.accepted) == 1 and len(spool.request_ids()) == 1
    assert (spool.layout.inbox / "notes.txt").exists()
    assert spool.read_request(report.accepted[0]).prompts == ("fine",)
    assert len(report.rejected) == len(HOSTILE) - 1 + 2


def test_a_file_still_settling_waits_for_the_next_tick(spool):
    path = spool.layout.inbox / "fresh.yaml"
    path.write_bytes(b"prompt: a\nengine: dry-run\n")
    sched = Scheduler(spool, launcher=None, settle=1.0)
    mtime = os.stat(path).st_mtime
    report = sched.tick(now=mtime + 0.1)
    assert report.accepted == [] and report.waiting_files == 1
    assert report.wake_in == pytest.approx(0.9, abs=0.01)
    assert sched.tick(now=mtime + 1.5).accepted != []


def test_part_files_are_never_read(spool):
    (spool.layout.inbox / "req.yaml.part").write_bytes(b"prompt: [half writ")
    old = os.stat(spool.layout.inbox / "req.yaml.part").st_mtime - 60
    os.utime(spool.layout.inbox / "req.yaml.part", (old, old))
    report = Scheduler(spool, launcher=None).tick(now=old + 120)
    assert report.rejected == [] and report.accepted == []
    os.rename(spool.layout.inbox / "req.yaml.part", spool.layout.inbox / "req.yaml")
    report = Scheduler(spool, launcher=None).tick(now=old + 120)
    assert report.rejected == ["req.yaml"]
