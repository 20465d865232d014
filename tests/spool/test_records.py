"""`CorruptRecord.kind` says what is wrong with a spool file without parsing its reason: the
request intake answers each kind in its own words (tests/spool/test_intake.py)."""

import os

import pytest

from sdgen.exceptions import RequestError
from sdgen.spool.intake import read_request_file
from sdgen.spool.records import CorruptKind, CorruptRecord, load_json_object, read_bytes


def kind_of(read, path) -> CorruptKind:
    with pytest.raises(CorruptRecord) as caught:
        read(path)
    return caught.value.kind


def test_a_symlink_a_fifo_a_folder_and_an_oversized_file_each_have_their_kind(tmp_path):
    target = tmp_path / "target.json"
    target.write_bytes(b"{}")
    (tmp_path / "link.json").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "big.json").write_bytes(b" " * 101)

    assert kind_of(read_bytes, tmp_path / "link.json") is CorruptKind.SYMLINK
    assert kind_of(read_bytes, tmp_path / "fifo.json") is CorruptKind.NOT_REGULAR
    assert kind_of(read_bytes, tmp_path / "folder.json") is CorruptKind.NOT_REGULAR
    assert kind_of(lambda p: read_bytes(p, max_bytes=100), tmp_path / "big.json") is CorruptKind.TOO_BIG
    assert read_bytes(tmp_path / "big.json", max_bytes=101) == b" " * 101


def test_a_file_read_whole_but_wrong_is_bad_content(tmp_path):
    (tmp_path / "broken.json").write_bytes(b"{not json")
    (tmp_path / "list.json").write_bytes(b"[]")
    assert kind_of(load_json_object, tmp_path / "broken.json") is CorruptKind.BAD_CONTENT
    assert kind_of(load_json_object, tmp_path / "list.json") is CorruptKind.BAD_CONTENT
    assert CorruptRecord(tmp_path / "x", "any reason").kind is CorruptKind.BAD_CONTENT  # store.py's raises


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.symlink_to(p.with_name("elsewhere.yaml")), "is a symbolic link: copy the request file itself"),
        (os.mkfifo, "is not a regular file: a request is a YAML text file"),
        (lambda p: p.write_bytes(b"prompt: " + b"x" * 100), "is over 50 bytes; a request file may be at most 50"),
    ],
)
def test_the_intake_answers_each_kind_in_its_own_words(tmp_path, make, message):
    path = tmp_path / "request.yaml"
    make(path)
    with pytest.raises(RequestError, match=message):
        read_request_file(path, max_bytes=50)
