"""Soak and chaos harness: faults, hostile input and scale, with the dry-run engine, real
processes and real signals. Prints figures; `--json FILE` keeps them.

    python benchmarks/soak.py faults  [--trials 20]      workers/daemon SIGKILLed, SIGTERM + restart
    python benchmarks/soak.py hostile [--files 300]      100+ kinds of bad input beside valid work
    python benchmarks/soak.py scale   [--max-tickets 100000]
    python benchmarks/soak.py infra                      two daemons, clock skew, disk full, MLflow down
    python benchmarks/soak.py all --quick                 the short version the test suite runs

Targets (issue 7): 0 images lost, 0 duplicated, no ticket held without a reason, the daemon
never dies from a worker's fault; bounded daemon memory; nothing quadratic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from sdgen.spool.intake import is_candidate, is_stray  # noqa: E402
from sdgen.spool.layout import TICKET_STATES  # noqa: E402
from sdgen.spool.request import parse_request  # noqa: E402
from sdgen.spool.store import Spool  # noqa: E402
from tests.harness import daemons_of, kill_all, sdgen_env, workers_of  # noqa: E402

FAST = ["--rescan", "0.3", "--lease-timeout", "3", "--worker-idle-exit", "2"]


def sdgen(data: Path, *args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdgen", *args],
        env=sdgen_env(data, **extra),
        capture_output=True,
        text=True,
        timeout=600,
    )


def start_daemon(data: Path, *args, **extra) -> subprocess.Popen:
    """Start a daemon and wait until it holds the data directory (a signal sent during its
    imports would only test Python's default handler)."""
    log = open(data.parent / "daemon.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdgen", "daemon", *args],
        env=sdgen_env(data, **extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = data / "spool" / "daemon.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(info.read_text())["pid"] == proc.pid:
                break
        except (FileNotFoundError, ValueError, KeyError, TypeError, RecursionError):
            pass  # not written yet, or (hostile trial) planted damage the daemon rewrites
        time.sleep(0.05)
    return proc


def submit_many(data: Path, requests: int, images: int, batch: int) -> dict[str, int]:
    expected = {}
    for i in range(requests):
        rid = sdgen(
            data,
            "submit",
            "--engine",
            "dry-run",
            "--width",
            "128",
            "--height",
            "128",
            "--prompt",
            f"soak {i}",
            "--images",
            str(images),
            "--batch-size",
            str(batch),
            "--seed",
            str(1000 * i),
        ).stdout.strip()
        expected[rid] = images
    return expected


def audit(data: Path, expected: dict[str, int]) -> dict:
    """Count images expected, produced, lost and duplicated; tickets held without a reason."""
    spool = Spool(data)
    produced = lost = duplicated = 0
    for rid, n in expected.items():
        files = (
            sorted(p.name for p in (data / "outputs" / rid).glob("*.png")) if (data / "outputs" / rid).exists() else []
        )
        names = set(files)
        request = spool.read_request(rid)
        want = {f"0000-{i:06d}-{(request.seed + i) % 2**32}.png" for i in range(n)}
        produced += len(names & want)
        lost += len(want - names)
        duplicated += len(names - want) + (len(files) - len(names))
    markers = {}
    # only the audited requests' tickets (the hostile trial plants junk tickets of others)
    ours = lambda names: [n for n in names if n.split(".", 2)[-1] in expected]  # noqa: E731
    for name in ours(spool.ticket_names("done")):
        markers[name] = markers.get(name, 0) + 1
    double_markers = sum(1 for c in markers.values() if c > 1)
    held_without_reason = 0
    for state in ("held", "failed"):
        for name in ours(spool.ticket_names(state)):
            if not spool.read_ticket(state, name).reason:
                held_without_reason += 1
    rework = mismatched = 0
    # every done ticket's record, in done/ or folded into its request's ledger
    for marker in (m for rid in expected for m in spool.done_markers(rid)):
        rework += marker.get("attempt", 0)
        for o in marker.get("result", {}).get("outputs", []):
            f = data / o["file"]
            if not f.exists() or hashlib.sha256(f.read_bytes()).hexdigest() != o["sha256"]:
                mismatched += 1
    return {
        "expected": sum(expected.values()),
        "produced": produced,
        "lost": lost,
        "duplicated": duplicated + double_markers,
        "held_without_reason": held_without_reason,
        "tickets_rerun_after_a_fault": rework,
        "images_not_as_their_marker_says": mismatched,
        "stray_part_files": len(list((data / "outputs").rglob("*.part"))),
    }


def wait_idle(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return -999


# -- faults --------------------------------------------------------------------------------
def submit_backlog(data: Path, tickets: int) -> list[str]:
    """A queue of `tickets` one-image tickets waiting behind the audited requests (priority
    -1, requests of at most 100,000 images): the kill -9 trials run over a deep spool."""
    ids = []
    while tickets > 0:
        n = min(100_000, tickets)
        ids.append(
            sdgen(
                data,
                "submit",
                *("--engine", "dry-run", "--width", "128", "--height", "128", "--priority", "-1"),
                *("--prompt", f"backlog {len(ids)}", "--images", str(n), "--seed", "7"),
            ).stdout.strip()
        )
        tickets -= n
    return ids


def audit_backlog(data: Path, ids: list[str]) -> dict:
    """Every ticket of the backlog exactly once: in one folder, or still unwritten (at or
    after its split cursor), never both, never twice, never missing."""
    spool = Spool(data)
    folders: dict[str, dict[int, int]] = {rid: {} for rid in ids}
    for state in ("pending", "running", "done", "deferred", "held", "failed", "cancelled"):
        for name in spool.ticket_names(state):
            _, index, rid = name.split(".", 2)
            if rid in folders:
                folders[rid][int(index)] = folders[rid].get(int(index), 0) + 1
    lost = duplicated = written = 0
    accepted = 0
    for rid in ids:
        state = spool.read_state(rid)
        if state is None:  # not accepted yet (still in the inbox): none of its tickets may exist
            unwritten_from = 0
        else:
            accepted += 1
            total = state["tickets_total"]
            unwritten_from = total - spool.unwritten_tickets(rid, total)
        seen = folders[rid]
        written += len(seen)
        duplicated += sum(c - 1 for c in seen.values()) + sum(1 for i in seen if i >= unwritten_from)
        lost += sum(1 for i in range(unwritten_from) if i not in seen)
    return {
        "backlog_requests_accepted": f"{accepted}/{len(ids)}",
        "backlog_tickets_written": written,
        "backlog_lost": lost,
        "backlog_duplicated": duplicated,
    }


def faults(trials: int, requests: int, images: int, quick: bool, backlog: int = 0) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sdgen-soak-"))
    data = root / "data"
    backlog_ids = submit_backlog(data, backlog)
    expected = submit_many(data, requests, images, 3)
    delay = 0.02
    rng = random.Random(7)
    daemon = start_daemon(data, "--workers", "3", *FAST, SDGEN_DRY_RUN_DELAY=delay)
    # the trials run over the whole backlog: wait until every request of it is accepted
    spool = Spool(data)
    deadline = time.monotonic() + 300
    while backlog_ids and time.monotonic() < deadline and any(spool.read_state(r) is None for r in backlog_ids):
        time.sleep(0.2)
    kills = {"worker_sigkill": 0, "daemon_sigkill": 0, "sigterm_restart": 0}
    daemon_deaths_unexplained = 0
    for trial in range(trials):
        time.sleep(rng.uniform(0.3, 1.2))
        kind = ["worker_sigkill", "worker_sigkill", "daemon_sigkill", "sigterm_restart"][trial % 4]
        if daemon.poll() is not None:
            daemon_deaths_unexplained += 1
            daemon = start_daemon(data, "--workers", "3", *FAST, SDGEN_DRY_RUN_DELAY=delay)
            continue
        if kind == "worker_sigkill":
            ws = workers_of(data)
            if ws:
                rng.choice(ws).kill()
                kills[kind] += 1
        elif kind == "daemon_sigkill":
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait()
            kills[kind] += 1
            daemon = start_daemon(data, "--workers", "3", *FAST, SDGEN_DRY_RUN_DELAY=delay)
        else:  # SIGTERM to everything: the daemon and every worker (orphans of killed daemons too)
            daemon.send_signal(signal.SIGTERM)
            for w in workers_of(data):
                w.send_signal(signal.SIGTERM)
            code = wait_idle(daemon, 60)
            psutil.wait_procs(workers_of(data), timeout=30)
            running = os.listdir(data / "spool" / "tickets" / "running")
            kills[kind] += 1
            if code != 0:
                daemon_deaths_unexplained += 1
            kills.setdefault("sigterm_exit_codes", []).append(code)
            kills.setdefault("running_after_sigterm", []).append(len(running))
            daemon = start_daemon(data, "--workers", "3", *FAST, SDGEN_DRY_RUN_DELAY=delay)
    daemon.send_signal(signal.SIGTERM)
    wait_idle(daemon, 60)
    backlog_audit = {}
    if backlog_ids:
        backlog_audit = dict(backlog=backlog, **audit_backlog(data, backlog_ids))
        for rid in backlog_ids:  # the final run does the audited requests only
            sdgen(data, "cancel", rid)
    final = start_daemon(data, "--workers", "3", "--exit-when-idle", *FAST)
    code = wait_idle(final, 600)
    result = {
        "trials": trials,
        **kills,
        "final_exit": code,
        "daemon_died_unasked": daemon_deaths_unexplained,
        **audit(data, expected),
        **backlog_audit,
    }
    return result


# -- hostile input (issue 14) -------------------------------------------------------------
# Every kind has a class, a name, a maker and the outcome it must end in. Inbox kinds make
# entries in the inbox; spool kinds plant damage in the spool. Each is thrown `reps` times
# (once in --quick) with a unique base name, and each entry's end is looked up afterwards:
# accepted (a request with its marker prompt), rejected (spool/rejected/ + .reason),
# ignored (left in the inbox, shown by `sdgen status` as "ignored"), unread (hidden / .part
# names, left as they were), stuck (spool/intake.json), corrupt (spool/corrupt/ + .reason),
# rewritten (a daemon-owned file written anew), left (still as planted), moved-to-<state>.
MIB = 1024 * 1024
LIMIT = 1024 * 1024  # defaults.MAX_REQUEST_BYTES


@dataclass
class Kind:
    cls: str
    name: str
    make: Callable  # inbox: (inbox, base) -> [(entry name, marker or None)]; spool: (ctx, base) -> [rel]
    expect: tuple = ("rejected",)
    known: str = ""  # a failure found by this trial, not fixed yet: thrown apart, in a last stage


def good(marker: str, **extra) -> str:
    body = {"prompt": f"hostile {marker}", "engine": "dry-run", "width": 128, "height": 128, "images": 1}
    body.update(extra)
    return "".join(f"{k}: {v}\n" for k, v in body.items())


def good_fields() -> str:
    return "engine: dry-run\nwidth: 128\nheight: 128\nimages: 1\n"


def padded(text: str, size: int) -> bytes:
    raw = text.encode()
    return raw + b"#" + b"p" * (size - len(raw) - 2) + b"\n"


def nested_flow(open_: str, close: str, n: int) -> str:
    return "prompt: a\nx: " + open_ * n + "1" + close * n + "\n"


def nested_block_list(n: int) -> str:
    return "prompt: a\nx:\n" + "- " * n + "1\n"


def nested_block_map(n: int) -> str:
    return "prompt: a\n" + "".join(" " * d + f"k{d}:\n" for d in range(n)) + " " * n + "v\n"


def keys(n: int, flow: bool = False) -> str:
    if flow:
        return "{prompt: a, " + ", ".join(f"{i:x}: 0" for i in range(n)) + "}\n"
    return "prompt: a\n" + "".join(f"k{i}: 0\n" for i in range(n))


def content_kinds() -> list[Kind]:
    """Class 1: request files, by their bytes. Each entry (cls, name, body, expect)."""
    A, R = ("accepted",), ("rejected",)
    t: list[tuple[str, str, Callable[[str], bytes | str], tuple]] = []
    add = lambda cls, name, body, expect=R: t.append((cls, name, body, expect))  # noqa: E731
    # size
    add("size", "empty", lambda m: b"")
    add("size", "whitespace_only", lambda m: "  \n\n ")
    add("size", "comment_only", lambda m: "# nothing\n")
    add("size", "limit_plus_one", lambda m: padded(good(m), LIMIT + 1))
    add("size", "exactly_at_limit", lambda m: padded(good(m), LIMIT), A)
    add("size", "two_mib", lambda m: padded(good(m), 2 * LIMIT))
    # nesting depth
    for n in (10, 100, 5000):
        add("nesting", f"flow_list_{n}", lambda m, n=n: nested_flow("[", "]", n))
        add("nesting", f"flow_map_{n}", lambda m, n=n: nested_flow("{a: ", "}", n))
        add("nesting", f"block_list_{n}", lambda m, n=n: nested_block_list(n))
    for n in (10, 100, 1000):  # 1000 block levels already take 0.5 MB of indentation
        add("nesting", f"block_map_{n}", lambda m, n=n: nested_block_map(n))
    add("nesting", "prompt_list_100", lambda m: "prompt: " + "[" * 100 + "a" + "]" * 100 + "\n")
    add("nesting", "unclosed_5000", lambda m: "[" * 5000)
    # many keys
    add("keys", "keys_65", lambda m: keys(65))
    add("keys", "keys_100", lambda m: keys(100))
    add("keys", "keys_50000", lambda m: keys(50_000))
    add("keys", "keys_100000_in_1mib", lambda m: keys(100_000, flow=True))
    add("keys", "keys_100_nested", lambda m: "prompt: a\nx:\n" + "".join(f"  k{i}: 0\n" for i in range(100)))
    add("keys", "non_scalar_key", lambda m: "prompt: a\n? [a, b]\n: 1\n")
    add("keys", "null_key", lambda m: "prompt: a\n~: 1\n")
    # duplicate keys
    add("duplicates", "top_twice", lambda m: good(m) + "images: 100000\n")
    add("duplicates", "nested_twice", lambda m: good(m) + "x: {a: 1, a: 2}\n")
    add("duplicates", "quoted_double", lambda m: good(m) + '"images": 5\n')
    add("duplicates", "quoted_single", lambda m: good(m) + "'prompt': other\n")
    add("duplicates", "prompt_and_prompts", lambda m: good(m) + "prompts: [a, b]\n")
    add("duplicates", "merge_key", lambda m: good(m) + "<<: {images: 5}\n", A + R)  # explicit keys win
    add("duplicates", "flow_twice", lambda m: "{prompt: a, prompt: b}\n")
    # aliases and anchors
    add("aliases", "simple_alias", lambda m: "prompt: &p a\nnegative_prompt: *p\n")
    add("aliases", "anchor_only", lambda m: good(m).replace("prompt: ", "prompt: &p ", 1), A + R)
    add(
        "aliases",
        "billion_laughs",
        lambda m: (
            "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
            + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
        ),
    )
    add("aliases", "merge_alias", lambda m: "base: &b {images: 1}\n<<: *b\nprompt: a\n")
    add("aliases", "self_alias", lambda m: "a: &a [*a]\n")
    add("aliases", "undefined_alias", lambda m: "prompt: *nothing\n")
    # object tags
    for name, body in [
        ("python_object", "!!python/object:os.system {}"),
        ("python_apply", "!!python/object/apply:os.system ['echo pwned']"),
        ("python_name", "!!python/name:os.system"),
        ("python_module", "!!python/module:os"),
        ("binary", "!!binary aGVsbG8="),
        ("set", "!!set {a, b}"),
        ("omap", "!!omap [a: 1]"),
        ("custom", "!mytag x"),
        ("verbatim", "!<tag:example.com,2000:x> y"),
        ("str_on_images", None),
        ("timestamp_seed", None),
    ]:
        if body is None:
            continue
        add("tags", name, lambda m, body=body: f"prompt: {body}\n" + good_fields())
    add("tags", "str_tag_on_images", lambda m: good(m, images="!!str 5"))
    add("tags", "timestamp_as_seed", lambda m: good(m, seed="2001-12-14"))
    add("tags", "explicit_str_prompt", lambda m: good(m).replace("prompt: ", "prompt: !!str ", 1), A + R)
    # encodings
    add("encodings", "latin1", lambda m: good(m, name="caf\xe9").encode("latin-1"))
    add("encodings", "utf16_le_bom", lambda m: good(m).encode("utf-16"))
    add("encodings", "utf16_be_bom", lambda m: b"\xfe\xff" + good(m).encode("utf-16-be"))
    add("encodings", "utf32_bom", lambda m: good(m).encode("utf-32"))
    add("encodings", "utf8_bom", lambda m: b"\xef\xbb\xbf" + good(m).encode(), A + R)
    add("encodings", "invalid_utf8", lambda m: good(m).encode() + b"name: \xff\xfe\n")
    add("encodings", "overlong_utf8", lambda m: good(m).encode() + b"name: \xc0\xaf\n")
    add("encodings", "surrogate_bytes", lambda m: good(m).encode() + b"name: \xed\xa0\x80\n")
    add("encodings", "nul_bytes", lambda m: good(m).encode() + b"name: a\x00b\n")
    add("encodings", "lone_surrogate_escaped", lambda m: good(m) + 'name: "\\ud800"\n')
    add("encodings", "nul_escaped", lambda m: good(m) + 'name: "a\\0b"\n')
    add("encodings", "binary_junk", lambda m: random.Random(m).randbytes(4096))
    # syntax errors
    add("syntax", "unclosed_flow", lambda m: "prompt: [unclosed\n")
    add("syntax", "unclosed_quote", lambda m: 'prompt: "never closed\n')
    add("syntax", "bad_indent", lambda m: "prompt: a\n  images: 1\n wrong: 2\n")
    add("syntax", "tab_indent", lambda m: "prompt:\n\t- a\n")
    add("syntax", "stray_bracket", lambda m: "prompt: a]\n]\n")
    add("syntax", "bad_escape", lambda m: 'prompt: "\\q"\n')
    add("syntax", "two_documents", lambda m: good(m) + "---\n" + good(m))
    add("syntax", "bad_directive", lambda m: "%YAML 9.9\n---\n" + good(m))
    add("syntax", "colon_soup", lambda m: "prompt: a: b: c\n")
    add("syntax", "block_in_flow", lambda m: "{prompt: a\nimages: 1\n")
    # wrong top-level types
    add("top_level", "list", lambda m: "- prompt: a\n- images: 1\n")
    add("top_level", "string", lambda m: "just a prompt\n")
    add("top_level", "integer", lambda m: "42\n")
    add("top_level", "null", lambda m: "~\n")
    add("top_level", "bool", lambda m: "true\n")
    add("top_level", "empty_document", lambda m: "---\n...\n")
    # every schema field wrong
    schema = [
        ("prompt", "5"),
        ("prompt", '""'),
        ("prompt", "[]"),
        ("prompts", "[]"),
        ("prompts", "[1, 2]"),
        ("prompts", "[" + ", ".join(["a"] * 1001) + "]"),
        ("prompt", "x" * 2001),
        ("negative_prompt", "[a]"),
        ("images", "0"),
        ("images", "-5"),
        ("images", "1000000"),
        ("images", "many"),
        ("images", "1.5"),
        ("images", "true"),
        ("batch_size", "0"),
        ("batch_size", "[2]"),
        ("steps", "0"),
        ("steps", '"10"'),
        ("steps", "100000"),
        ("width", "333"),
        ("width", "4096"),
        ("height", "abc"),
        ("guidance", "fast"),
        ("guidance", "-1"),
        ("seed", "-1"),
        ("seed", "4294967296"),
        ("seed", "1.5"),
        ("model", "sd-v9"),
        ("engine", "magic"),
        ("weights", "stolen"),
        ("priority", "high"),
        ("priority", "100000"),
        ("name", "[a]"),
        ("name", "n" * 201),
        ("experiment", "{a: 1}"),
        ("version", "3"),
        ("negative", "x"),
        ("imgaes", "1"),
        ("Prompt", "a"),
        ("Images", "1"),
    ]
    for k, (field_, value) in enumerate(schema):
        add(
            "schema",
            f"{field_.strip() or 'blank'}_{k}",
            lambda m, f=field_, v=value: (
                (f"{f}: {v}\n" + good_fields()) if f.startswith(("prompt", "Prompt")) else good(m, **{f: v})
            ),
        )
    # control characters
    for name, field_, value in [
        ("esc_in_name", "name", '"\\e[2J\\e]0;pwned\\a"'),
        ("osc_in_experiment", "experiment", '"\\e]8;;http://x\\e\\\\link"'),
        ("bidi_in_prompt", "prompt", '"abc \\u202e gnp.exe"'),
        ("c1_csi_in_name", "name", '"\\x9b31m red"'),
        ("c1_nel_in_experiment", "experiment", '"a\\x85b"'),
        ("bell_in_prompt", "prompt", '"ring \\a"'),
        ("del_in_name", "name", '"a\\x7fb"'),
        ("newline_in_name", "name", '"a\\nb"'),
        ("backspace_in_negative", "negative_prompt", '"ok\\b\\b\\bno"'),
    ]:
        add(
            "control_chars",
            name,
            lambda m, f=field_, v=value: good(m) + f"{f}: {v}\n" if f != "prompt" else f"prompt: {v}\n" + good_fields(),
        )
    # huge strings
    add("huge_strings", "prompt_100k", lambda m: "prompt: " + "x" * 100_000 + "\n" + good_fields())
    add("huge_strings", "negative_100k", lambda m: good(m) + "negative_prompt: " + "y" * 100_000 + "\n")
    add("huge_strings", "name_100k", lambda m: good(m) + "name: " + "n" * 100_000 + "\n")
    add("huge_strings", "key_100k", lambda m: good(m) + "k" * 100_000 + ": 1\n")
    add(
        "huge_strings",
        "prompts_500_of_2001_chars",
        lambda m: "prompts:\n" + "".join(f"- {'p' * 2001}\n" for _ in range(500)) + good_fields(),
    )
    # numbers
    for field_, value in [
        ("images", "1e999"),
        ("guidance", ".nan"),
        ("guidance", ".inf"),
        ("width", ".inf"),
        ("seed", "-.inf"),
        ("seed", "1e309"),
        ("steps", "0x7fffffffffffffffffff"),
        ("priority", "1_0_0_0_0_0_0"),
        ("guidance", "1e-400"),
    ]:
        add(
            "numbers",
            f"{field_}_{value.strip('.-').replace('_', '')[:12]}",
            lambda m, f=field_, v=value: good(m, **{f: v}),
            A + R if value == "1e-400" else R,
        )
    return [
        Kind(
            cls,
            name,
            lambda inbox, base, body=body, name=name: _write(inbox, f"{base}-{name}.yaml", body, base),
            expect,
        )
        for cls, name, body, expect in t
    ]


def _write(inbox: Path, entry: str, body, marker: str) -> list[tuple[str, str | None]]:
    data = body(marker)
    (inbox / entry).write_bytes(data.encode() if isinstance(data, str) else data)
    return [(entry, marker)]


def name_kinds() -> list[Kind]:
    """Class 1: odd file names (the content is a valid request unless said otherwise)."""
    out = []

    def named(cls, name, entry_of, expect, body=good):
        def make(inbox, base):
            entry = entry_of(base)
            (inbox / entry).write_text(body(base))
            return [(entry, base)]

        out.append(Kind(cls, name, make, expect))

    A, R = ("accepted",), ("rejected",)
    named("file_names", "len_200", lambda b: b + "-" + "n" * (195 - len(b)) + ".yaml", A)
    named("file_names", "len_250", lambda b: b + "-" + "n" * (244 - len(b)) + ".yaml", A)
    named("file_names", "len_255_bad", lambda b: b + "-" + "n" * (249 - len(b)) + ".yaml", R, lambda m: "prompt: [")
    named("file_names", "multibyte_200", lambda b: b + "-" + "\u00e9" * 100 + ".yaml", R)
    named("file_names", "multibyte_250_bytes", lambda b: b + "-" + "\u6f22" * ((244 - len(b)) // 3) + ".yaml", R)
    named("file_names", "spaces", lambda b: f"my request {b} (1).yaml", A)
    named("file_names", "brackets", lambda b: f"{b} [draft] (copy).yml", A)
    named("file_names", "unicode", lambda b: f"{b}-\u00fcn\u00efc\u00f6d\u00e9.yaml", R)
    named("file_names", "emoji", lambda b: f"{b}-\U0001f98a.yaml", R)
    named("file_names", "leading_dash", lambda b: f"-{b}.yaml", R)
    named("file_names", "double_dot", lambda b: f"{b}..yaml", R)
    named("file_names", "dotdot_inside", lambda b: f"a..{b}.yaml", R)
    named("file_names", "newline", lambda b: f"{b}\nx.yaml", R)
    named("file_names", "escape_seq", lambda b: f"{b}\x1b[31mred.yaml", R)
    named("file_names", "bidi", lambda b: f"{b}-\u202elmay.yaml", R)
    named("file_names", "backslash", lambda b: f"{b}\\x.yaml", R)
    named("file_names", "shell_chars", lambda b: f"{b};$(id)`x`.yaml", R)
    named(
        "file_names",
        "request_id_name",
        lambda b: f"20991231-235959-{int(b[1:4]) * 1000 + int(b.split('-')[1]):06x}.yaml",
        A,
    )
    named("non_yaml", "txt", lambda b: f"{b}.txt", ("ignored",))
    named("non_yaml", "json", lambda b: f"{b}.json", ("ignored",))
    named("non_yaml", "no_suffix", lambda b: b, ("ignored",))
    named("non_yaml", "yaml_bak", lambda b: f"{b}.yaml.bak", ("ignored",))
    named("non_yaml", "yaml_tilde", lambda b: f"{b}.yaml~", ("ignored",))
    named("non_yaml", "upper_YAML", lambda b: f"{b}.YAML", ("ignored",))
    named("hidden", "dot_yaml", lambda b: f".{b}.yaml", ("unread",), lambda m: "prompt: [")
    named("hidden", "part", lambda b: f"{b}.yaml.part", ("unread",), lambda m: "prompt: [")
    named("hidden", "tmp", lambda b: f"{b}.yaml.tmp", ("unread",), lambda m: "prompt: [")
    named("hidden", "dot_part", lambda b: f".{b}.yaml.part", ("unread",), lambda m: "prompt: [")

    def fifo_hidden(inbox, base):  # a reader would block forever: proof that it is never opened
        os.mkfifo(inbox / f"{base}.yaml.part")
        return [(f"{base}.yaml.part", None)]

    out.append(Kind("hidden", "fifo_part", fifo_hidden, ("unread",)))
    return out


def entry_kinds(root: Path) -> list[Kind]:
    """Class 2: what an inbox entry can be besides a file, and files that change under us."""
    passwd = root / "outside.yaml"
    out = []

    def k(name, expect=("rejected",)):
        def deco(fn):
            out.append(Kind("entry_types", name, fn, expect))
            return fn

        return deco

    @k("fifo")
    def _(inbox, base):
        os.mkfifo(inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("directory")
    def _(inbox, base):
        (inbox / f"{base}.yaml").mkdir()
        return [(f"{base}.yaml", None)]

    @k("directory_with_request_inside")
    def _(inbox, base):
        (inbox / f"{base}.yaml").mkdir()
        (inbox / f"{base}.yaml" / "x.yaml").write_text(good(base))
        return [(f"{base}.yaml", None)]

    @k("symlink_outside")
    def _(inbox, base):
        os.symlink(passwd, inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("symlink_etc_passwd")
    def _(inbox, base):
        os.symlink("/etc/passwd", inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("symlink_to_fifo")
    def _(inbox, base):
        os.mkfifo(root / f"{base}.fifo")
        os.symlink(root / f"{base}.fifo", inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("symlink_dangling")
    def _(inbox, base):
        os.symlink(root / "does-not-exist", inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("symlink_to_directory")
    def _(inbox, base):
        os.symlink(root, inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("symlink_loop")
    def _(inbox, base):
        os.symlink(inbox / f"{base}.yaml", inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("symlink_to_valid_sibling")
    def _(inbox, base):
        (root / f"{base}.valid").write_text(good(base))
        os.symlink(root / f"{base}.valid", inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("hard_link_to_another_request", ("accepted",))
    def _(inbox, base):
        (inbox / f"{base}-a.yaml").write_text(good(base))
        os.link(inbox / f"{base}-a.yaml", inbox / f"{base}-b.yaml")
        return [(f"{base}-a.yaml", base), (f"{base}-b.yaml", base)]

    @k("unix_socket")
    def _(inbox, base):
        import socket

        s = socket.socket(socket.AF_UNIX)
        cwd = os.getcwd()
        os.chdir(inbox)  # a socket path is limited to 108 bytes
        try:
            s.bind(f"{base}.yaml")
        finally:
            os.chdir(cwd)
            s.close()
        return [(f"{base}.yaml", None)]

    @k("swapped_for_fifo_race")
    def _(inbox, base):
        (inbox / f"{base}.yaml").write_text(good(base))
        os.mkfifo(inbox / f".{base}.fifo")
        os.rename(inbox / f".{base}.fifo", inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("swapped_for_symlink_race")
    def _(inbox, base):
        (inbox / f"{base}.yaml").write_text(good(base))
        os.symlink("/etc/shadow", inbox / f".{base}.lnk")
        os.rename(inbox / f".{base}.lnk", inbox / f"{base}.yaml")
        return [(f"{base}.yaml", None)]

    @k("truncated_to_zero_after_drop")
    def _(inbox, base):
        (inbox / f"{base}.yaml").write_text(good(base))
        os.truncate(inbox / f"{base}.yaml", 0)
        return [(f"{base}.yaml", None)]

    @k("truncated_mid_quote_after_drop")
    def _(inbox, base):
        text = good(base) + 'name: "a long quoted name"\n'
        (inbox / f"{base}.yaml").write_text(text)
        os.truncate(inbox / f"{base}.yaml", len(text) - 8)
        return [(f"{base}.yaml", None)]

    @k("growing_in_place_3s", ("accepted",))
    def _(inbox, base):
        """An in-place writer, open all along, a line every 0.25 s for 3 s; `images: 2` last.
        Taken early it would be a 1-image request (the default is 9: `images: 1` first)."""

        def write():
            with open(inbox / f"{base}.yaml", "w") as f:
                lines = (
                    [
                        f"prompt: hostile {base}\n",
                        "engine: dry-run\n",
                        "width: 128\n",
                        "height: 128\n",
                        "batch_size: 1\n",
                    ]
                    + [f"# line {i}\n" for i in range(6)]
                    + ["seed: 5\n", "images: 2\n"]
                )
                for line in lines:
                    f.write(line)
                    f.flush()
                    time.sleep(3.0 / len(lines))

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        GROWERS.append((thread, base, 2))
        time.sleep(0.02)
        return [(f"{base}.yaml", base)]

    return out


GROWERS: list[tuple[threading.Thread, str, int]] = []


# -- damaged spool files (class 3) --
TICKET = {
    "request_id": "",
    "index": 0,
    "priority": 0,
    "prompt": "x",
    "negative_prompt": "",
    "images": [{"prompt_index": 0, "image_index": 0, "seed": 1}],
    "steps": 1,
    "width": 128,
    "height": 128,
    "guidance": 7.5,
    "model": "sd-v1",
    "engine": "dry-run",
    "weights": "pretrained",
}


def spool_kinds() -> list[Kind]:
    """Each maker plants damage and returns the spool-relative paths it planted. ctx has
    .spool, .fake_id() (an id no request has) and .victim() (a fresh accepted request)."""
    out = []

    def plant(ctx, rel: str, data) -> str:
        path = ctx.spool.layout.spool / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() or path.is_symlink() or path.is_fifo():
            path.unlink()  # in place of the file the daemon wrote
        if data == "FIFO":
            os.mkfifo(path)
        elif data == "DIR":
            path.mkdir()
            (path / "x").write_text("junk")
        else:
            path.write_bytes(data)
        return rel

    junk = lambda: random.Random(5).randbytes(300)  # noqa: E731
    deep = b"[" * 100_000
    # request state and request.yaml (of victim requests that must still end done)
    for name, data in [
        ("not_json", b"{not json"),
        ("wrong_types", b'{"id": 5, "state": [], "images": "x"}'),
        ("a_list", b"[1, 2, 3]"),
        ("deeply_nested", deep),
        ("empty", b""),
        ("junk_bytes", None),
        ("fifo", "FIFO"),
        ("directory", "DIR"),
    ]:
        out.append(
            Kind(
                "spool_state",
                f"state_json_{name}",
                lambda ctx, base, d=data: [
                    plant(ctx, f"requests/{ctx.victim()}/state.json", junk() if d is None else d)
                ],
                ("corrupt", "rewritten"),
            )
        )
    for name, data in [
        ("junk", None),
        ("empty", b""),
        ("wrong_schema", b"prompt: 5\nimages: many\n"),
        ("fifo", "FIFO"),
    ]:
        out.append(
            Kind(
                "spool_state",
                f"request_yaml_{name}",
                lambda ctx, base, d=data: [
                    plant(ctx, f"requests/{ctx.victim()}/request.yaml", junk() if d is None else d)
                ],
                ("corrupt", "left"),
            )
        )
    out.append(
        Kind(
            "spool_state",
            "request_yaml_and_state_json",
            lambda ctx, base: (
                lambda rid: [
                    plant(ctx, f"requests/{rid}/request.yaml", b"\xff"),
                    plant(ctx, f"requests/{rid}/state.json", b"{"),
                ]
            )(ctx.victim()),
            ("corrupt", "left", "rewritten"),
        )
    )  # a done request's request.yaml is not read again
    out.append(
        Kind(
            "spool_state",
            "request_dir_is_a_file",
            lambda ctx, base: [plant(ctx, f"requests/{ctx.fake_id()}", b"junk")],
            ("corrupt",),
        )
    )
    # tickets
    for state in ("pending", "running", "deferred", "failed", "held"):
        for name, data in [
            ("junk_bytes", None),
            ("json_list", b"[]"),
            ("wrong_shape", b'{"request_id": 5}'),
            ("steps_string", "steps"),
            ("images_empty", "images"),
            ("deeply_nested", deep),
            ("fifo", "FIFO"),
            ("directory", "DIR"),
            ("valid_orphan", "orphan"),
        ]:

            def make(ctx, base, state=state, d=data):
                rid = ctx.fake_id()
                if d in ("steps", "images", "orphan"):
                    t = dict(TICKET, request_id=rid)
                    if d == "steps":
                        t["steps"] = "10"
                    if d == "images":
                        t["images"] = []
                    d = json.dumps(t).encode()
                return [plant(ctx, f"tickets/{state}/1000.000000.{rid}.json", junk() if d is None else d)]

            out.append(
                Kind(
                    "spool_tickets",
                    f"{state}_{name}",
                    make,
                    ("corrupt", "moved", "left") if name == "valid_orphan" else ("corrupt", "left", "moved"),
                )
            )
        out.append(
            Kind(
                "spool_tickets",
                f"{state}_not_a_ticket_name",
                lambda ctx, base, s=state: [plant(ctx, f"tickets/{s}/{base}-not-a-ticket.json", b"{}")],
                ("corrupt", "left"),
            )
        )
    # leases (read for tickets in running/: each with a junk running ticket beside it)
    for name, data in [
        ("junk", None),
        ("deeply_nested", deep),
        ("wrong_types", b'{"worker": 1, "pid": "x"}'),
        ("a_list", b"[]"),
        ("fifo", "FIFO"),
    ]:

        def make(ctx, base, d=data):
            tname = f"1000.000000.{ctx.fake_id()}"
            return [
                plant(ctx, f"tickets/running/{tname}.json", b"\x00junk"),
                plant(ctx, f"leases/{tname}.json", junk() if d is None else d),
            ]

        out.append(Kind("spool_leases", f"lease_{name}", make, ("corrupt",)))
    out.append(
        Kind(
            "spool_leases",
            "lease_without_ticket",
            lambda ctx, base: [plant(ctx, f"leases/1000.000000.{ctx.fake_id()}.json", b"junk")],
            ("corrupt", "left"),
        )
    )
    # daemon-owned status files: rewritten or left; readers must cope
    for fname in ("launcher.json", "tracking.json", "intake.json", "daemon.json"):
        for name, data in [("junk", None), ("wrong_type", b'"a string"'), ("deep", deep)]:
            out.append(
                Kind(
                    "spool_status_files",
                    f"{fname.split('.')[0]}_{name}",
                    lambda ctx, base, f=fname, d=data: [plant(ctx, f, junk() if d is None else d)],
                    ("rewritten", "left", "corrupt"),
                )
            )
    # events, incoming
    out.append(
        Kind(
            "spool_other",
            "event_junk",
            lambda ctx, base: [plant(ctx, f"events/{time.time_ns():020d}-{ctx.fake_id()}-{base[-6:]}.json", junk())],
            ("corrupt", "removed", "left"),
        )
    )
    out.append(
        Kind(
            "spool_other",
            "event_fifo",
            lambda ctx, base: [plant(ctx, f"events/{time.time_ns():020d}-{ctx.fake_id()}-f.json", "FIFO")],
            ("corrupt", "removed", "left"),
        )
    )
    out.append(
        Kind(
            "spool_other",
            "incoming_junk_name",
            lambda ctx, base: [plant(ctx, f"incoming/{base}.txt", b"junk")],
            ("corrupt",),
        )
    )
    out.append(
        Kind(
            "spool_other",
            "incoming_bad_request",
            lambda ctx, base: [plant(ctx, f"incoming/{ctx.fake_id()}.yaml", b"prompt: [")],
            ("rejected",),
        )
    )
    out.append(
        Kind(
            "spool_other",
            "incoming_fifo",
            lambda ctx, base: [plant(ctx, f"incoming/{ctx.fake_id()}.yaml", "FIFO")],
            ("rejected",),
        )
    )
    return out


def aside_safe(name: str) -> str:
    """The tail of a rejected/ or corrupt/ name (Spool._aside_name without its stamp)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "unnamed"
    if len(safe) > 150:
        safe = f"{safe[:120]}...{hashlib.sha1(name.encode('utf-8', 'replace')).hexdigest()[:10]}"
    return safe


def aside_index(folder: Path) -> dict[str, Path]:
    out = {}
    for p in folder.iterdir():
        if not p.name.endswith(".reason"):
            out[re.sub(r"^\d{8}-\d{6}-[0-9a-f]{4}-", "", p.name)] = p
    return out


class SpoolCtx:
    def __init__(self, data: Path, victims: list[str]):
        self.spool = Spool(data)
        self.victims = victims
        self.n = 0

    def fake_id(self) -> str:
        self.n += 1
        return f"20000101-000000-{self.n:06x}"

    def victim(self) -> str:
        return self.victims.pop()


def check_commands(data: Path) -> dict:
    bad = {}
    for cmd in (["status"], ["status", "--json"], ["list"]):
        out = sdgen(data, *cmd)
        if out.returncode != 0 or "Traceback" in out.stdout + out.stderr:
            bad[" ".join(cmd)] = f"exit {out.returncode}: {(out.stderr or out.stdout)[-300:]}"
    return bad


def hostile(files: int, quick: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sdgen-hostile-"))
    data = root / "data"
    try:
        return _hostile(root, data, files, quick)
    finally:  # a harness error must not leave a daemon and its workers behind
        kill_all(workers_of(data))
        kill_all(daemons_of(data))


def _hostile(root: Path, data: Path, files: int, quick: bool) -> dict:
    t0 = time.time()
    (root / "outside.yaml").write_text("prompt: untouched\n")
    GROWERS.clear()
    inbox_kinds = content_kinds() + name_kinds() + entry_kinds(root)
    damage_kinds = spool_kinds()
    reps = 1 if quick else max(1, -(-files // len(inbox_kinds)))
    expected = submit_many(data, 3, 12 if quick else 60, 2)
    spool = Spool(data).ensure()
    # victim requests whose state.json / request.yaml get damaged: two plantings in full mode
    # (daemon running, then stopped), one in quick mode (alternating between the two)
    n_victims = sum(1 for k in damage_kinds if k.cls == "spool_state" and "dir_is" not in k.name) * (1 if quick else 2)
    victims = []
    for i in range(n_victims):
        rid = f"20010101-000000-{i:06x}"
        spool.accept(rid, parse_request(good(f"victim-{i}", images=2, seed=i)), source="soak", now=time.time())
        victims.append(rid)
    ctx = SpoolCtx(data, list(victims))
    daemon = start_daemon(data, "--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY=0.01)
    time.sleep(1.0)
    proc = psutil.Process(daemon.pid)
    rss_before = proc.memory_info().rss
    inbox = spool.layout.inbox
    thrown: list[tuple[Kind, str, str | None]] = []  # kind, entry, marker
    for rep in range(reps):
        for idx, kind in enumerate(inbox_kinds):
            base = f"h{idx:03d}-{rep}"
            for entry, marker in kind.make(inbox, base):
                thrown.append((kind, entry, marker))
    planted: list[tuple[Kind, str, bytes | str]] = []

    def plant_all(phase: int):
        for idx, kind in enumerate(damage_kinds):
            if kind.known or (quick and idx % 2 != phase):
                continue
            for rel in kind.make(ctx, f"d{idx:03d}-{phase}"):
                p = spool.layout.spool / rel
                shape = "FIFO" if p.is_fifo() else "DIR" if p.is_dir() else p.read_bytes()
                planted.append((kind, rel, shape))

    plant_all(0)
    deaths = 0
    mid_commands = check_commands(data)
    rss_peak = rss_before
    deadline = time.time() + 300
    while time.time() < deadline:
        if daemon.poll() is not None:
            deaths += 1
            daemon = start_daemon(data, "--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY=0.01)
            proc = psutil.Process(daemon.pid)
        rss_peak = max(rss_peak, proc.memory_info().rss)
        waiting = [e for e in os.listdir(inbox) if is_candidate(e)]
        if not waiting and not any(t.is_alive() for t, _, _ in GROWERS):
            break
        time.sleep(0.2)
    inbox_wait = round(time.time() - t0, 1)
    alive_after_inbox = daemon.poll() is None
    daemon.send_signal(signal.SIGTERM)
    first_exit = wait_idle(daemon, 60)
    psutil.wait_procs(workers_of(data), timeout=30)
    plant_all(1)
    last = start_daemon(data, "--workers", "2", "--exit-when-idle", *FAST)
    code = wait_idle(last, 120 if quick else 300)
    end_commands = check_commands(data)
    status_rows = json.loads(sdgen(data, "status", "--json").stdout or "[]")
    ignored_shown = {r["id"][len("inbox/") :] for r in status_rows if r.get("state") == "ignored"}

    # -- how each thing thrown ended --
    layout = spool.layout
    rejected = aside_index(layout.rejected)
    corrupt = aside_index(layout.corrupt)
    stuck = (json.loads(layout.intake_status.read_text() or "{}") if layout.intake_status.exists() else {}).get(
        "stuck", {}
    )
    left_in_inbox = set(os.listdir(inbox))
    markers: dict[str, list[str]] = {}
    accepted_ids = [r for r in spool.request_ids() if r not in expected and r not in victims]
    for rid in accepted_ids:
        try:
            markers.setdefault(spool.read_request(rid).prompts[0].split(" ", 1)[-1], []).append(rid)
        except Exception:  # noqa: BLE001
            pass
    per_class: dict[str, dict] = {}
    unexpected = []
    reasonless = 0
    extra_expected = {}
    grown_whole = 0
    for kind, entry, marker in thrown:
        if entry in stuck:
            how = "stuck"
        elif entry in left_in_inbox:
            how = "ignored" if is_stray(entry) else "unread" if not is_candidate(entry) else "still_in_inbox"
            if how == "ignored" and entry not in ignored_shown:
                how = "ignored_not_shown_by_status"
        elif aside_safe(entry) in rejected:
            how = "rejected"
            reason = rejected[aside_safe(entry)].with_name(rejected[aside_safe(entry)].name + ".reason")
            if not (reason.exists() and reason.read_text().strip()):
                reasonless += 1
                how = "rejected_without_reason"
        elif marker and markers.get(marker):
            how = "accepted"
            rid = markers[marker].pop()
            req = spool.read_request(rid)
            extra_expected[rid] = req.images
            if any(g[1] == marker for g in GROWERS):
                grown_whole += req.images == 2 and req.seed == 5
        else:
            how = "vanished"
        c = per_class.setdefault(kind.cls, {"kinds": set(), "files": 0})
        c["kinds"].add(kind.name)
        c["files"] += 1
        c[how] = c.get(how, 0) + 1
        if how not in kind.expect:
            unexpected.append(f"{kind.cls}/{kind.name}: {how} ({aside_safe(entry)[:60]})")
    spool_root = layout.spool
    for kind, rel, shape in planted:
        p = spool_root / rel
        parts = Path(rel).parts
        found = [aside_safe("_".join(parts[:n])) for n in range(len(parts), 0, -1)]
        if any(f in corrupt for f in found):
            how = "corrupt"
            f = next(f for f in found if f in corrupt)
            reason = corrupt[f].with_name(corrupt[f].name + ".reason")
            if not (reason.exists() and reason.read_text().strip()):
                reasonless += 1
                how = "corrupt_without_reason"
        elif parts[0] == "incoming" and aside_safe(parts[-1]) in rejected:
            how = "rejected"
        elif p.exists() or p.is_symlink():
            now_shape = "FIFO" if p.is_fifo() else "DIR" if p.is_dir() else p.read_bytes()
            how = "left" if now_shape == shape else "rewritten"
        elif parts[0] == "tickets" and any(aside_safe(f"tickets_{s}_{parts[-1]}") in corrupt for s in TICKET_STATES):
            how = "corrupt"  # claimed by a worker first, then moved aside from running/
        elif parts[0] == "tickets" and spool.find_ticket(Path(rel).stem):
            how = "moved"
        else:
            how = "removed"
        c = per_class.setdefault(kind.cls, {"kinds": set(), "files": 0})
        c["kinds"].add(kind.name)
        c["files"] += 1
        c[how] = c.get(how, 0) + 1
        if how not in kind.expect:
            unexpected.append(f"{kind.cls}/{kind.name}: {how} ({rel[:70]})")
    victim_states = {}
    for rid in victims:
        try:
            victim_states[spool.read_state(rid)["state"]] = victim_states.get(spool.read_state(rid)["state"], 0) + 1
        except Exception as e:  # noqa: BLE001
            key = "moved to corrupt/" if not layout.request_dir(rid).exists() else f"unreadable ({type(e).__name__})"
            victim_states[key] = victim_states.get(key, 0) + 1
    for c in per_class.values():
        c["kinds"] = len(c["kinds"])
    log_text = (root / "daemon.log").read_text(errors="replace")
    tick_steps_failing = sorted(set(re.findall(r"tick step '([^']+)' failed \((\w+)", log_text)))
    # last stage: kinds that broke something, each on a fresh daemon, after the audit
    findings = {}
    for idx, kind in enumerate(k for k in damage_kinds if k.known):
        before = len((root / "daemon.log").read_text(errors="replace"))
        d = start_daemon(data, "--workers", "1", *FAST, SDGEN_DRY_RUN_DELAY=0.01)
        rels = kind.make(ctx, f"known{idx}")
        time.sleep(2.0)
        failing = check_commands(data)
        alive = d.poll() is None
        d.send_signal(signal.SIGTERM)
        stop_exit = wait_idle(d, 60)
        for rel in rels:  # take it away again, so that the data directory stays usable
            p = spool_root / rel
            if not os.path.lexists(p):
                continue  # moved aside by the daemon meanwhile
            p.unlink() if not p.is_dir() or p.is_symlink() else shutil.rmtree(p)
        tail = (root / "daemon.log").read_text(errors="replace")[before:]
        findings[f"{kind.cls}/{kind.name}"] = {
            "known": kind.known,
            "planted": rels,
            "daemon_alive": alive,
            "sigterm_exit": stop_exit,
            "tick_steps_failing": sorted(set(re.findall(r"tick step '([^']+)' failed", tail))),
            "commands_failing": failing,
        }
        c = per_class.setdefault(kind.cls, {"kinds": 0, "files": 0})
        c["kinds"] += 1
        c["files"] += len(rels)
        c["finding"] = c.get("finding", 0) + len(rels)
    all_kinds = len(inbox_kinds) + len(damage_kinds)
    files_thrown = len(thrown) + len(planted)
    result = {
        "kinds": all_kinds,
        "files_thrown": files_thrown,
        "reps": reps,
        "per_class": per_class,
        "unexpected_outcomes": unexpected,
        "without_reason": reasonless,
        "findings": findings,
        "tick_steps_failing": tick_steps_failing,
        "growing_files_taken_whole": f"{grown_whole}/{len(GROWERS)}",
        "accepted_hostile_requests": len(extra_expected),
        "victim_requests": victim_states,
        "daemon_deaths": deaths,
        "daemon_alive_after_inbox": alive_after_inbox,
        "sigterm_exit": first_exit,
        "commands_failing_mid_run": mid_commands,
        "commands_failing_after": end_commands,
        "outside_file_untouched": (root / "outside.yaml").read_text() == "prompt: untouched\n",
        "inbox_seconds": inbox_wait,
        "daemon_rss_mb_before": round(rss_before / 2**20, 1),
        "daemon_rss_mb_peak": round(rss_peak / 2**20, 1),
        "final_exit": code,
        **audit(data, {**expected, **extra_expected}),
        "wall_s": round(time.time() - t0, 1),
    }
    return result


# -- scale ---------------------------------------------------------------------------------
def claim_throughput(workers: int, tickets: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="sdgen-claim-"))
    spool = Spool(root / "data").ensure()
    per = 10
    r = parse_request(f"prompt: a\nimages: {per}\nengine: dry-run\nwidth: 128\nheight: 128\nseed: 1\n")
    for i in range(tickets // per):
        spool.accept(f"20261126-000000-{i:06x}", r, "bench", 0.0)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sdgen", "--data", str(spool.layout.root), "worker", "--idle-exit", "0.5"],
            env=sdgen_env(spool.layout.root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - t0 - 0.5  # minus the final idle wait
    done = len(spool.ticket_names("done"))
    assert done == tickets, (done, tickets)
    return tickets / elapsed


def inbox_latency(poll: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="sdgen-lat-"))
    data = root / "data"
    args = ["--workers", "1", "--lease-timeout", "4"] + (["--poll", "--rescan", "0.5"] if poll else ["--rescan", "30"])
    daemon = start_daemon(data, *args)
    time.sleep(2.5)
    samples = []
    inbox = data / "spool" / "inbox"
    for i in range(5):
        (inbox / f".r{i}.part").write_text(
            f"prompt: a\nimages: 1\nengine: dry-run\nwidth: 128\nheight: 128\nseed: {i}\n"
        )
        t0 = time.perf_counter()
        os.rename(inbox / f".r{i}.part", inbox / f"r{i}.yaml")
        while True:
            spool = Spool(data)
            if (
                any(spool.ticket_names(s) for s in ("running", "done"))
                and len(spool.ticket_names("running")) + len(spool.ticket_names("done")) > i
            ):
                break
            time.sleep(0.005)
        samples.append(time.perf_counter() - t0)
        time.sleep(0.5)
    daemon.send_signal(signal.SIGTERM)
    wait_idle(daemon, 30)
    samples.sort()
    return samples[len(samples) // 2]


def queue_scale(requests: int, per_request: int) -> dict:
    from sdgen.daemon.scheduler import Scheduler

    root = Path(tempfile.mkdtemp(prefix="sdgen-scale-"))
    spool = Spool(root / "data").ensure()
    r = parse_request(f"prompt: a\nimages: {per_request}\nengine: dry-run\nseed: 1\n")
    t0 = time.perf_counter()
    for i in range(requests):
        spool.accept(f"20261126-{i // 1000000:06d}-{i % 16**6:06x}", r, "bench", 0.0)
    fill = time.perf_counter() - t0
    code = (
        "import time,sys,resource; sys.path.insert(0, sys.argv[2]); t=time.perf_counter();"
        "from sdgen.spool.store import Spool; from sdgen.daemon.scheduler import Scheduler;"
        "s=Spool(sys.argv[1]); s.reconcile(); Scheduler(s, None).tick(time.time());"
        "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(spool.layout.root), str(REPO)], capture_output=True, text=True, check=True
    ).stdout.split()
    start_s, rss_mb = float(out[0]), float(out[1])
    t1 = time.perf_counter()
    sdgen(spool.layout.root, "status", "--json")
    status_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    Scheduler(spool, None).tick(time.time())
    tick_s = time.perf_counter() - t2
    # a claim with the worker's reused listing (what workers do) against relisting each time
    from sdgen.spool.claim import PendingView, claim_next

    view = PendingView(spool, refresh=3600)
    t3 = time.perf_counter()
    for _ in range(200):
        claim_next(spool, "bench", view=view)
    with_view = (time.perf_counter() - t3) / 200
    t4 = time.perf_counter()
    for _ in range(5):
        claim_next(spool, "bench")
    relisting = (time.perf_counter() - t4) / 5
    return {
        "requests": requests,
        "tickets": requests * per_request,
        "fill_s": round(fill, 1),
        "daemon_start_s": round(start_s, 2),
        "daemon_start_rss_mb": round(rss_mb, 1),
        "status_json_s": round(status_s, 2),
        "steady_tick_s": round(tick_s, 3),
        "claim_ms_reusing_listing": round(with_view * 1000, 2),
        "claim_ms_relisting": round(relisting * 1000, 2),
    }


def overhead() -> dict:
    """Orchestration seconds per ticket against engine seconds, from done-markers."""
    root = Path(tempfile.mkdtemp(prefix="sdgen-ovh-"))
    data = root / "data"
    submit_many(data, 2, 20, 2)
    d = start_daemon(data, "--workers", "1", "--exit-when-idle", *FAST, SDGEN_DRY_RUN_DELAY=0.25)
    t0 = time.perf_counter()
    wait_idle(d, 300)
    wall = time.perf_counter() - t0
    spool = Spool(data)
    gen = total = 0.0
    for name in spool.ticket_names("done"):
        res = json.loads(spool.layout.ticket("done", name).read_text())["result"]["seconds"]
        gen += res["generate"]
        total += res["total"]
    n = len(spool.ticket_names("done"))
    return {
        "tickets": n,
        "engine_s_per_ticket": round(gen / n, 3),
        "worker_overhead_s_per_ticket": round((total - gen) / n, 4),
        "end_to_end_s_per_ticket": round(wall / n, 3),
        "overhead_fraction_in_worker": round((total - gen) / total, 4),
    }


def scale(max_tickets: int, quick: bool) -> dict:
    out = {"claim_tickets_per_s": {}}
    for w in (1, 2) if quick else (1, 2, 4, 8):
        out["claim_tickets_per_s"][w] = round(claim_throughput(w, 200 if quick else 2000), 1)
        print(f"  claim throughput, {w} worker(s): {out['claim_tickets_per_s'][w]} tickets/s", flush=True)
    if not quick:
        out["inbox_to_claim_s_watch"] = round(inbox_latency(False), 3)
        out["inbox_to_claim_s_poll"] = round(inbox_latency(True), 3)
        print(f"  inbox -> claim: watch {out['inbox_to_claim_s_watch']}s, poll {out['inbox_to_claim_s_poll']}s")
    out["queue"] = []
    n = 100 if quick else 1000
    while n * 10 <= max_tickets:
        row = queue_scale(n, 10)
        out["queue"].append(row)
        print(f"  {row}", flush=True)
        n *= 10
    out["overhead"] = overhead()
    print(f"  overhead: {out['overhead']}")
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["faults", "hostile", "infra", "scale", "all"])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--max-tickets", type=int, default=100_000)
    p.add_argument(
        "--backlog",
        type=int,
        help="waiting tickets behind the fault trials' requests (default 100,000 with --quick, else 1,000,000)",
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    results = {}
    if a.what in ("faults", "all"):
        backlog = a.backlog if a.backlog is not None else 100_000 if a.quick else 1_000_000
        results["faults"] = faults(
            4 if a.quick else a.trials, 3 if a.quick else 6, 12 if a.quick else 60, a.quick, backlog=backlog
        )
        print("faults", json.dumps(results["faults"]), flush=True)
    if a.what in ("hostile", "all"):
        results["hostile"] = hostile(60 if a.quick else a.files, a.quick)
        print("hostile", json.dumps(results["hostile"]), flush=True)
    if a.what in ("infra", "all"):
        from soak_infra import infra

        results["infra"] = infra(a.quick)
    if a.what in ("scale", "all"):
        results["scale"] = scale(1000 if a.quick else a.max_tickets, a.quick)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
