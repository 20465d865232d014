"""The worker in-process with the dry-run engine: outputs, markers, reruns, stops, failures."""

import hashlib
import json
import os

from sdgen.engine.dryrun import DryRunEngine
from sdgen.spool.claim import claim_next
from sdgen.spool.request import parse_request
from sdgen.worker.loop import Worker
from sdgen.worker.runner import run_ticket

RID = "20261126-000000-aaaaaa"


def accept(spool, text="prompt: a fox\nimages: 4\nbatch_size: 4\nseed: 10\nengine: dry-run\nwidth: 128\nheight: 128\n"):
    spool.accept(RID, parse_request(text), source="t", now=0.0)


def test_a_ticket_makes_its_images_and_a_marker(spool):
    accept(spool)
    outcome = Worker(spool, "w1").step()
    assert outcome.state == "done" and outcome.images_made == 4
    out = spool.layout.output_dir(RID)
    assert sorted(p.name for p in out.iterdir()) == [f"0000-{i:06d}-{10 + i}.png" for i in range(4)] + [
        "index.csv",
        "index.json",
        "metadata.jsonl",
    ]
    [name] = spool.ticket_names("done")
    marker = json.loads(spool.layout.ticket("done", name).read_text())
    r = marker["result"]
    assert r["worker"] == "w1" and r["attempt"] == 1 and r["images_made"] == 4
    for o in r["outputs"]:
        assert hashlib.sha256((spool.layout.root / o["file"]).read_bytes()).hexdigest() == o["sha256"]
    assert "generate" in r["seconds"]


def test_a_rerun_skips_images_already_written(spool):
    accept(spool)
    out = spool.layout.output_dir(RID)
    out.mkdir(parents=True)
    (out / "0000-000001-11.png").write_bytes(b"from an earlier attempt")
    outcome = Worker(spool, "w1").step()
    assert (outcome.images_made, outcome.images_skipped) == (3, 1)
    assert (out / "0000-000001-11.png").read_bytes() == b"from an earlier attempt"


def test_cancel_stops_at_the_next_image_boundary(spool):
    accept(spool)
    claim = claim_next(spool, "w1")
    calls = []

    def should_stop():
        calls.append(1)
        if len(calls) == 3:
            spool.cancel(RID, now=1.0)
            return "cancelled"
        return None

    outcome = run_ticket(claim, DryRunEngine(), should_stop, "w1")
    assert outcome.state == "cancelled" and outcome.images_made == 2
    assert spool.ticket_names("cancelled") == [claim.name]
    assert len(list(spool.layout.output_dir(RID).glob("*.png"))) == 2


def test_shutdown_hands_the_ticket_back_unchanged(spool):
    accept(spool)
    claim = claim_next(spool, "w1")
    outcome = run_ticket(claim, DryRunEngine(), lambda: "shutdown", "w1")
    assert outcome.state == "handed-back"
    t = spool.read_ticket("pending", claim.name)
    assert t.attempt == 0 and not spool.layout.lease(claim.name).exists()


def test_an_io_error_is_transient_and_deferred(spool):
    accept(spool)
    spool.layout.outputs.mkdir(parents=True, exist_ok=True)
    spool.layout.output_dir(RID).write_text("a file where the folder should be")
    outcome = Worker(spool, "w1").step()
    assert outcome.state == "deferred" and "FileExistsError" in outcome.error
    t = spool.read_ticket("deferred", spool.ticket_names("deferred")[0])
    assert t.attempt == 1 and t.wait_s > 0


def test_dry_run_images_depend_only_on_their_seed(spool):
    from sdgen.engine.dryrun import dry_run_image

    a = dry_run_image("p", 5, 128, 128).tobytes()
    assert a == dry_run_image("p", 5, 128, 128).tobytes()
    assert a != dry_run_image("p", 6, 128, 128).tobytes()
    assert dry_run_image("p", 5, 256, 128).size == (256, 128)


def test_half_written_images_of_dead_workers_are_swept(spool):
    import socket

    accept(spool)
    out = spool.layout.output_dir(RID)
    out.mkdir(parents=True)
    dead = out / f".0000-000000-10.png.{socket.gethostname()}.{2**22 + 7}.part"
    live = out / f".other.png.{socket.gethostname()}.{os.getpid()}.part"
    dead.write_bytes(b"half")
    live.write_bytes(b"being written")
    Worker(spool, "w1").step()
    assert not dead.exists() and live.exists()


def test_out_of_memory_is_transient_and_ends_the_worker_process():
    from sdgen.exceptions import EngineError, UserError
    from sdgen.worker.runner import classify

    assert classify(MemoryError()) == (True, True)
    assert classify(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")) == (True, True)
    assert classify(OSError("disk")) == (True, False)
    assert classify(EngineError("weights missing", transient=False)) == (False, False)
    assert classify(UserError("bad")) == (False, False)


def test_a_late_writer_thawed_mid_ticket_replaces_nothing_and_reports_lost(spool):
    """Frozen past its lease: the daemon gave the ticket to w2, which finished it. When the
    late worker's engine returns, its pictures (different bytes here) must not replace w2's,
    and it must not log a second finished attempt."""
    accept(spool)
    late = claim_next(spool, "late")

    class ThawedLate(DryRunEngine):
        def generate(self, ticket, images):
            if not spool.ticket_names("done"):
                spool.move_ticket(late.name, "running", "pending")  # what the daemon's reclaim does
                spool.layout.lease(late.name).unlink()
                assert Worker(spool, "w2").step().state == "done"
            return [img.rotate(90) for img in super().generate(ticket, images)]

    outcome = run_ticket(late, ThawedLate(), lambda: None, "late")
    assert outcome.state == "lost" and outcome.images_made == 4
    marker = json.loads(spool.layout.ticket("done", late.name).read_text())
    assert marker["result"]["worker"] == "w2"
    for o in marker["result"]["outputs"]:
        assert hashlib.sha256((spool.layout.root / o["file"]).read_bytes()).hexdigest() == o["sha256"]
    finished = [
        e for e in spool.event_names() if json.loads((spool.layout.events / e).read_text())["status"] == "FINISHED"
    ]
    assert len(finished) == 1
    assert not list(spool.layout.output_dir(RID).glob(".*.part"))
