"""Everything the spool reads is untrusted: generated YAML documents and byte strings thrown
at the request parser and at every reader of spool files. The only outcomes allowed are a
value or the reader's clean error (RequestError / CorruptRecord / FileNotFoundError), with a
bounded one-line message."""

from __future__ import annotations

import json
import time

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdgen import defaults
from sdgen.exceptions import RequestError
from sdgen.launchers.base import load_jobs
from sdgen.spool.claim import Lease
from sdgen.spool.intake import read_request_file
from sdgen.spool.records import CorruptRecord, load_json_object
from sdgen.spool.request import KNOWN_KEYS, parse_request
from sdgen.spool.store import Spool

RID = "20261126-000000-aaaaaa"
TICKET = f"1000.000000.{RID}"
FAST = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
keys = st.one_of(st.sampled_from(sorted(KNOWN_KEYS)), st.text(max_size=12))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=8)),
    max_leaves=40,
)


def clean(message: str) -> bool:
    return "\n" not in message and 0 < len(message) <= defaults.MAX_REASON_CHARS + 200


def parse_cleanly(text: str) -> None:
    try:
        parse_request(text)
    except RequestError as e:
        assert clean(str(e)), str(e)


@FAST
@given(documents)
def test_generated_yaml_documents_end_in_a_request_or_one_line(doc):
    parse_cleanly(yaml.safe_dump(doc))
    parse_cleanly(yaml.safe_dump(doc, default_flow_style=True))


@FAST
@given(st.text(max_size=400))
def test_any_text_ends_in_a_request_or_one_line(text):
    parse_cleanly(text)


@FAST
@given(
    st.lists(
        st.sampled_from(
            [
                "[",
                "{",
                "- ",
                "a: ",
                "\n  ",
                "&x ",
                "*x",
                "!!python/object ",
                "? ",
                "]",
                "}",
                ",",
                '"',
                "'",
                "\t",
                "images: 1\n",
                "prompt: a\n",
            ]
        ),
        max_size=300,
    )
)
def test_yaml_shaped_fragments_end_in_a_request_or_one_line(parts):
    parse_cleanly("".join(parts))


def test_the_limits_are_checked_before_any_document_is_built():
    for text in (
        "[" * 100_000,
        "a:\n" + "".join(f" {' ' * i}b{i}:\n" for i in range(2000)),
        "".join(f"k{i}: {i}\n" for i in range(100_000)),
    ):
        t0 = time.monotonic()
        try:
            parse_request(text)
        except RequestError as e:
            assert clean(str(e))
        else:
            raise AssertionError("accepted")
        assert time.monotonic() - t0 < 5


def read_all(spool: Spool) -> None:
    """Every reader of a spool file, each ending in a value or its clean error."""
    layout = spool.layout
    for reader in (
        lambda: spool.read_ticket("pending", TICKET),
        lambda: spool.read_state(RID),
        lambda: spool.read_request(RID),
        lambda: load_json_object(layout.launcher_status),
    ):
        try:
            reader()
        except CorruptRecord as e:
            assert clean(str(e))
        except FileNotFoundError:
            pass
    assert Lease.read(layout.lease(TICKET)) is None or isinstance(Lease.read(layout.lease(TICKET)), Lease)
    try:
        read_request_file(layout.inbox / "drop.yaml")
    except RequestError as e:
        assert clean(str(e))
    load_jobs(layout.spool / "slurm-jobs.json", dict)  # damaged: moved to corrupt/, never raises


@FAST
@given(st.binary(max_size=2000))
def test_every_spool_reader_survives_any_bytes(tmp_path_factory, raw):
    spool = Spool(tmp_path_factory.mktemp("d")).ensure()
    layout = spool.layout
    layout.request_dir(RID).mkdir(parents=True)
    for path in (
        layout.ticket("pending", TICKET),
        layout.request_state(RID),
        layout.request_file(RID),
        layout.lease(TICKET),
        layout.launcher_status,
        layout.inbox / "drop.yaml",
        layout.spool / "slurm-jobs.json",
    ):
        path.write_bytes(raw)
    read_all(spool)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=6)),
    max_leaves=30,
)
ticket_like = st.fixed_dictionaries(
    {},
    optional={
        k: json_values
        for k in (
            "request_id",
            "index",
            "priority",
            "prompt",
            "negative_prompt",
            "images",
            "steps",
            "width",
            "height",
            "guidance",
            "model",
            "engine",
            "weights",
            "attempt",
            "deaths",
            "history",
            "id",
            "state",
            "images_total",
            "tickets_total",
            "batch_size",
            "worker",
            "host",
            "pid",
            "claimed_at",
            "beat",
        )
    },
)


@FAST
@given(st.one_of(json_values, ticket_like))
def test_every_spool_reader_survives_any_json(tmp_path_factory, value):
    spool = Spool(tmp_path_factory.mktemp("d")).ensure()
    layout = spool.layout
    layout.request_dir(RID).mkdir(parents=True)
    raw = json.dumps(value).encode()
    for path in (
        layout.ticket("pending", TICKET),
        layout.request_state(RID),
        layout.lease(TICKET),
        layout.launcher_status,
        layout.spool / "slurm-jobs.json",
    ):
        path.write_bytes(raw)
    read_all(spool)


def test_deep_json_and_special_files_are_corrupt_not_crashes(spool, tmp_path):
    import os

    layout = spool.layout
    layout.request_dir(RID).mkdir(parents=True)
    layout.ticket("pending", TICKET).write_bytes(b"[" * 200_000)
    os.mkfifo(layout.request_state(RID))
    layout.lease(TICKET).symlink_to("/etc/passwd")
    for reader in (lambda: spool.read_ticket("pending", TICKET), lambda: spool.read_state(RID)):
        try:
            reader()
        except CorruptRecord as e:
            assert clean(str(e))
        else:
            raise AssertionError("read")
    assert Lease.read(layout.lease(TICKET)) is None
