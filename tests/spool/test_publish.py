"""Atomic publish, checked with real concurrent processes."""

import multiprocessing as mp
import os

from sdgen.spool.publish import link_new, publish


def _writer(tmp_dir, target, rounds):
    for i in range(rounds):
        # each version is a whole, self-checking record: a 200 kB run of one byte
        publish(tmp_dir, target, bytes([65 + i % 26]) * 200_000)


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    tmp_dir, target = tmp_path / "tmp", tmp_path / "out" / "request.yaml"
    tmp_dir.mkdir()
    target.parent.mkdir()
    publish(tmp_dir, target, b"A" * 200_000)
    proc = mp.get_context("spawn").Process(target=_writer, args=(tmp_dir, target, 300))
    proc.start()
    reads = torn = 0
    while proc.is_alive() or reads < 50:
        data = target.read_bytes()
        reads += 1
        if len(data) != 200_000 or len(set(data)) != 1:
            torn += 1
    proc.join()
    assert proc.exitcode == 0
    assert reads >= 50 and torn == 0
    assert os.listdir(tmp_dir) == []  # nothing left behind


def test_link_new_publishes_exactly_once(tmp_path):
    tmp_dir, target = tmp_path / "tmp", tmp_path / "done.json"
    tmp_dir.mkdir()
    assert link_new(tmp_dir, target, b"first") is True
    assert link_new(tmp_dir, target, b"second") is False
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_dir) == []
