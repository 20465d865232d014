"""A worker runs several small tickets of one request as one batch (engine.group_limit):
claim order, each ticket's own marker, and one bad ticket failing alone."""

import json

from sdgen.engine.dryrun import DryRunEngine
from sdgen.spool.request import parse_request
from sdgen.worker.loop import Worker
from sdgen.worker.runner import _chunks

A, B = "20261126-000000-aaaaaa", "20261126-000001-bbbbbb"


def accept(spool, rid, images=6, extra=""):
    spool.accept(
        rid,
        parse_request(
            f"prompt: a fox\nimages: {images}\nbatch_size: 1\nseed: 10\n"
            f"engine: dry-run\nwidth: 128\nheight: 128\n{extra}"
        ),
        source="t",
        now=0.0,
    )


class CountingEngine(DryRunEngine):
    """The dry-run engine, counting its batches; prompts with 'bad' fail."""

    def __init__(self, limit):
        super().__init__(delay=0)
        self.limit, self.groups, self.singles = limit, [], 0

    def group_limit(self, ticket):
        return self.limit

    def generate_group(self, items):
        self.groups.append([len(specs) for _, specs in items])
        if any("bad" in t.prompt for t, _ in items):
            raise RuntimeError("this batch has a bad prompt")
        return [DryRunEngine.generate(self, t, specs) for t, specs in items]

    def generate(self, ticket, images):
        self.singles += 1
        if "bad" in ticket.prompt:
            raise ValueError("bad prompt")
        return super().generate(ticket, images)


def worker(spool, limit):
    w = Worker(spool, "w1")
    w.engines["dry-run"] = engine = CountingEngine(limit)
    return w, engine


def test_small_tickets_of_a_request_run_as_one_batch_and_finish_one_by_one(spool):
    accept(spool, A, images=6)
    w, engine = worker(spool, 4)
    first = w.step()
    assert [first.state] + [o.state for o in first.others] == ["done"] * 4
    assert engine.groups == [[1, 1, 1, 1]] and engine.singles == 0
    done = spool.ticket_names("done")
    assert len(done) == 4 and len(spool.ticket_names("pending")) == 2
    for name in done:
        result = json.loads(spool.layout.ticket("done", name).read_text())["result"]
        assert result["images_made"] == 1 and result["seconds"]["group_tickets"] == 4.0
    w.step()  # the last two
    assert engine.groups[-1] == [1, 1] and len(spool.ticket_names("done")) == 6
    assert len(list(spool.layout.output_dir(A).glob("*.png"))) == 6


def test_a_group_takes_its_requests_tickets_past_others_which_keep_their_turn(spool):
    accept(spool, A, images=3)
    accept(spool, B, images=3)
    names = spool.ticket_names("pending")
    assert [n.rsplit(".", 1)[-1] for n in names[:2]] == [A, B]  # requests take turns
    w, engine = worker(spool, 3)
    w.step()
    assert sorted(n.rsplit(".", 1)[-1] for n in spool.ticket_names("done")) == [A] * 3
    assert spool.ticket_names("pending") == [n for n in names if n.endswith(B)]
    w.step()
    assert len(spool.ticket_names("done")) == 6 and engine.groups == [[1, 1, 1], [1, 1, 1]]


def test_a_group_that_fails_runs_its_tickets_alone_so_only_the_bad_one_fails(spool):
    spool.accept(
        A,
        parse_request(
            "prompts: [a fox, a bad fox, a cat]\nimages: 1\nseed: 3\nengine: dry-run\nwidth: 128\nheight: 128\n"
        ),
        source="t",
        now=0.0,
    )
    w, engine = worker(spool, 4)
    first = w.step()
    states = [first.state] + [o.state for o in first.others]
    assert sorted(states) == ["deferred", "done", "done"]  # the bad one: a failed attempt, retried later
    assert engine.singles == 3
    [failed] = spool.ticket_names("deferred")
    assert "bad prompt" in spool.read_ticket("deferred", failed).reason
    assert "a bad fox" == spool.read_ticket("deferred", failed).prompt


def test_grouping_is_off_where_the_engine_gains_nothing(spool):
    accept(spool, A, images=3)
    w = Worker(spool, "w1")
    first = w.step()
    assert first.others == [] and len(spool.ticket_names("done")) == 1


def test_chunks_cut_a_group_into_batches_a_ticket_may_straddle():
    items = [("t1", [1, 2, 3]), ("t2", [4, 5]), ("t3", [6])]
    assert _chunks(items, 4) == [[("t1", [1, 2, 3]), ("t2", [4])], [("t2", [5]), ("t3", [6])]]
    assert _chunks(items, 10) == [items]


def test_a_small_request_is_spread_over_the_daemons_workers_a_big_one_is_grouped(spool):
    """4 workers: 16 one-image tickets are taken one by one (the other GPUs would wait on
    one batch of 16); 64 give each worker a full batch. A lone worker always groups."""
    accept(spool, A, images=16)
    accept(spool, B, images=64)
    spool.write(spool.layout.launcher_status, json.dumps({"launcher": "local", "workers": {"running": 4}}).encode())
    w, engine = worker(spool, 16)
    first = w.step()
    assert first.others == [] and engine.groups == [] and engine.singles == 1  # A's first ticket, alone
    while w.step().others == []:  # A's and B's tickets take turns; A's stay single
        pass
    assert engine.groups == [[1] * 16]  # a full batch of B's once B's tickets in sight fill 4 of them
    assert spool.worker_count() == 4
    spool.layout.launcher_status.write_text("half-written")
    assert spool.worker_count() == 1


def test_a_lone_worker_groups_whatever_is_in_sight(spool):
    accept(spool, A, images=5)
    w, engine = worker(spool, 16)
    w.step()
    assert engine.groups == [[1] * 5]


def test_a_bad_group_setting_fails_the_ticket_with_the_reason(spool, monkeypatch):
    monkeypatch.setenv("SDGEN_GROUP_IMAGES", "lots")
    accept(spool, A, images=2)
    outcome = Worker(spool, "w1").step()
    assert (
        outcome.state == "failed"
        and "SDGEN_GROUP_IMAGES must be a whole number from 0 to 1024, got 'lots'" in outcome.error
    )
    [name] = spool.ticket_names("failed")
    assert "SDGEN_GROUP_IMAGES" in spool.read_ticket("failed", name).reason


class KeyRecordingEngine(CountingEngine):
    """Records the settings of every job in each forward pass."""

    def generate_group(self, items):
        self.keys = getattr(self, "keys", [])
        self.keys.append({(j.steps, j.width, j.height, j.guidance, j.model, j.negative_prompt) for j, _ in items})
        return super().generate_group(items)


def test_a_sweeps_tickets_of_other_settings_never_share_a_forward_pass(spool):
    """Group claims take only tickets whose settings equal the first's: a sweep of guidance x
    steps at batch 1 runs one pass per setting, and every image is still made."""
    accept(spool, A, images=3, extra="sweep: {guidance: [5, 9], steps: [2, 3]}\n")
    w = Worker(spool, "w1")
    w.engines["dry-run"] = engine = KeyRecordingEngine(16)
    outcomes = []
    while (first := w.step()) is not None:
        outcomes += [first, *first.others]
    assert [o.state for o in outcomes] == ["done"] * 12
    assert len(engine.keys) == 4 and all(len(keys) == 1 for keys in engine.keys)
    assert engine.groups == [[1, 1, 1]] * 4


def test_run_group_splits_mixed_settings_into_one_pass_each(spool):
    """Belt and braces: a group holding tickets of two settings anyway runs two passes."""
    from sdgen.spool.claim import claim_next

    accept(spool, A, images=2, extra="sweep: {steps: [2, 3]}\n")
    claims = [claim_next(spool, "w1") for _ in range(4)]
    engine = KeyRecordingEngine(16)
    from sdgen.worker.runner import run_group

    outcomes = run_group(claims, engine, [lambda: None] * 4, "w1")
    assert [o.state for o in outcomes] == ["done"] * 4
    assert sorted(len(k) for k in engine.keys) == [1, 1] and {s for k in engine.keys for s, *_ in k} == {2, 3}
