"""sdgen/web/guard.py: who may write, and which files may be served (pure functions)."""

from __future__ import annotations

import os

import pytest

from sdgen.web.guard import (
    Refused,
    image_path,
    inside,
    is_loopback,
    read_file,
    request_id,
    token_matches,
    write_refusal,
)

RID = "20261126-000000-aaaaaa"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "example.org", "192.168.1.1"])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


def test_token_compare():
    assert token_matches("s3cret", "s3cret")
    assert not token_matches("s3cre", "s3cret")
    assert not token_matches("", "s3cret")
    assert not token_matches(None, "s3cret")
    assert not token_matches("x", "")
    assert token_matches("ünï", "ünï")


def test_write_rules():
    # read-only wins over everything
    assert write_refusal(True, "t", True, "t").status == 403
    assert "read-only" in str(write_refusal(True, None, True, None))
    # loopback without a token: open
    assert write_refusal(False, None, True, None) is None
    # beyond loopback without a token: refused, saying how to allow it
    refusal = write_refusal(False, None, False, None)
    assert refusal.status == 403 and "--token" in str(refusal)
    # a token, when set, is asked for everywhere
    assert write_refusal(False, "t", True, None).status == 401
    assert write_refusal(False, "t", False, "wrong").status == 401
    assert write_refusal(False, "t", False, "t") is None
    assert all("\n" not in str(r) for r in (write_refusal(True, None, True, None), write_refusal(False, "t", 0, "x")))


@pytest.mark.parametrize("text", ["", "x", "../etc", "20261126-000000-AAAAAA", "20261126-000000-aaaaaa/..", RID + "\n"])
def test_request_ids_are_checked(text):
    with pytest.raises(Refused) as e:
        request_id(text)
    assert e.value.status == 404


def test_image_paths(tmp_path):
    root = tmp_path / "data"
    folder = root / "outputs" / RID
    folder.mkdir(parents=True)
    (folder / "0000-000000-5.png").write_bytes(b"png")
    assert image_path(root, folder, RID, "0000-000000-5.png") == folder / "0000-000000-5.png"
    assert image_path(root, folder, RID, "c0001-0000-000000-5.png").name.startswith("c0001")
    for bad in ("../../spool/daemon.json", "index.csv", ".0000-000000-5.png", "0000-000000-5.png/x", "a.png"):
        with pytest.raises(Refused):
            image_path(root, folder, RID, bad)
    # a symbolic link, inside or out, is never served
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    (folder / "0000-000001-6.png").symlink_to(outside)
    (folder / "0000-000002-7.png").symlink_to(folder / "0000-000000-5.png")
    for name in ("0000-000001-6.png", "0000-000002-7.png"):
        with pytest.raises(Refused):
            image_path(root, folder, RID, name)
    # an output folder that is a link out of the data directory
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "0000-000000-1.png").write_bytes(b"x")
    rid2 = "20261126-000000-bbbbbb"
    (root / "outputs" / rid2).symlink_to(other)
    with pytest.raises(Refused):
        image_path(root, root / "outputs" / rid2, rid2, "0000-000000-1.png")
    assert inside(root, folder) and not inside(root, other)


def test_read_file_refuses_links_fifos_and_big_files(tmp_path):
    plain = tmp_path / "a"
    plain.write_bytes(b"12345")
    assert read_file(plain, 10) == b"12345"
    with pytest.raises(Refused) as e:
        read_file(plain, 4)
    assert e.value.status == 413
    link = tmp_path / "b"
    link.symlink_to(plain)
    with pytest.raises(Refused):
        read_file(link, 10)
    fifo = tmp_path / "c"
    os.mkfifo(fifo)
    with pytest.raises(Refused):
        read_file(fifo, 10)  # refused without blocking
    with pytest.raises(Refused) as e:
        read_file(tmp_path / "missing", 10)
    assert e.value.status == 404
