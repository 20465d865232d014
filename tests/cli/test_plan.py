"""Batch programs end to end with the dry-run engine: `--plan` says what a sweep makes, the
daemon's intake expands and splits it, the worker writes every image with its combination,
and `sdgen show` / `submit --from` make one image of it again."""

import json
import time

from sdgen.pngmeta import read_meta
from sdgen.spool.intake import read_request_file
from sdgen.spool.states import TicketState
from sdgen.worker.loop import Worker
from tests.conftest import DRY, sdgen

SWEEP = DRY + "prompt: a {red|blue} fox\nimages: 3\nseed: 50\nsweep: {guidance: [5, 9], steps: [2, 3]}\n"


def plan_facts(out: str) -> dict:
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def intake_and_work(spool, request_id: str):
    """What the daemon and a worker do, in this process: accept the inbox file (templates
    expanded once, seed fixed), split it, run every ticket."""
    path = spool.layout.inbox / f"{request_id}.yaml"
    request = read_request_file(path)
    assert spool.claim_inbox_file(path, time.time()) == request_id
    accepted = spool.accept(request_id, request, source=path.name, now=time.time())
    worker = Worker(spool, "w1")
    while worker.step() is not None:
        pass
    return accepted


def test_a_2x2x3_sweep_gives_12_images_per_prompt_with_their_parameters_as_planned(data, spool, tmp_path):
    request_file = tmp_path / "sweep.yaml"
    request_file.write_text(SWEEP)
    plan = sdgen(data, "submit", request_file, "--plan", check=True).stdout
    facts = plan_facts(plan)
    assert facts["images"] == "2 prompts x 4 combinations x 3 images = 24"
    assert facts["tickets"] == "24 (batch size 1)"
    assert facts["prompt 0"] == "a red fox" and facts["prompt 1"] == "a blue fox"
    assert facts["combination 3"] == "guidance=9.0, steps=3"
    assert "dry-run engine uses no GPU" in facts["estimate"]
    assert plan.strip().endswith("nothing queued (--plan)") and not list(spool.layout.inbox.iterdir())

    request_id = sdgen(data, "submit", request_file, check=True).stdout.strip()
    accepted = intake_and_work(spool, request_id)
    assert accepted.images_total == 24 and accepted.templates == ("a {red|blue} fox",)
    assert len(spool.ticket_names(TicketState.DONE)) == 24
    pngs = sorted((data / "outputs" / request_id).glob("*.png"))
    assert len(pngs) == 24
    seen = set()
    for png in pngs:
        meta = read_meta(png)
        c = meta["combination"]
        assert (meta["guidance"], meta["steps"]) == (c["guidance"], c["steps"])
        assert meta["template"] == "a {red|blue} fox" and meta["prompt"] in ("a red fox", "a blue fox")
        assert meta["seed"] == 50 + meta["image_index"]
        assert (
            f"Steps: {c['steps']}, " in meta["parameters"] and f"CFG scale: {c['guidance']:g}, " in meta["parameters"]
        )
        assert "Template: a {red|blue} fox, Combination: " in meta["parameters"]
        seen.add((meta["prompt"], c["guidance"], c["steps"], meta["image_index"]))
    assert len(seen) == 24  # one per prompt x guidance x steps x image: as planned
    marker = json.loads(spool.layout.ticket(TicketState.DONE, spool.ticket_names(TicketState.DONE)[-1]).read_text())
    assert marker["combination"] == {"guidance": 9.0, "steps": 3} and marker["template"] == "a {red|blue} fox"
    assert marker["result"]["outputs"][0]["combination"] == marker["combination"]
    index = (data / "outputs" / request_id / "index.csv").read_text().splitlines()
    assert len(index) == 25 and index[0].endswith("template,combination_index,combination")

    # sdgen show names the template, the expansion and the combination; --from makes it again
    one = next(p for p in pngs if read_meta(p)["combination_index"] == 2 and read_meta(p)["image_index"] == 1)
    shown = sdgen(data, "show", one, check=True).stdout
    assert "template: a {red|blue} fox" in shown and "combination: guidance=9.0, steps=2 (combination 2" in shown
    again_id = sdgen(data, "submit", "--from", one, check=True).stdout.strip()
    intake_and_work(spool, again_id)
    [again] = list((data / "outputs" / again_id).glob("*.png"))
    original, remade = read_meta(one), read_meta(again)
    for key in ("prompt", "template", "seed", "steps", "guidance", "width", "height", "negative_prompt", "model"):
        assert remade[key] == original[key], key
    assert again.read_bytes() != b"" and _pixels(again) == _pixels(one)


def _pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.tobytes()


def test_plan_estimates_gpu_time_from_the_benchmark_figures(data, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("prompt: a fox\nimages: 16\nseed: 1\nsweep: {steps: [25, 50]}\n")
    facts = plan_facts(sdgen(data, "submit", f, "--plan", check=True).stdout)
    # 16 images of one setting run 16 to a pass: 1/4.79 s each at 50 steps, half at 25
    assert facts["estimate"].startswith("about 5 s of GPU time on one NVIDIA H200")
    assert "an estimate" in facts["estimate"]


def test_bad_programs_are_one_line_exit_2(data, tmp_path):
    f = tmp_path / "r.yaml"
    for text, words in [
        ("prompt: a __bird__\n", "wildcard __bird__: no file wildcards/bird.txt in the data directory"),
        ("prompt: a\nsweep: {colour: [1]}\n", "not a field a sweep can vary"),
        (
            "prompt: '" + "{a|b}" * 14 + "'\n",
            "more than 10000 prompts",
        ),
    ]:
        f.write_text(text)
        proc = sdgen(data, "submit", f)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_run_plan_queues_nothing(data):
    proc = sdgen(data, "run", "--prompt", "a {red|blue} fox", "--engine", "dry-run", "--plan", check=True)
    assert "prompt 1: a blue fox" in proc.stdout and "seed: " in proc.stdout
    assert not (data / "spool" / "inbox").exists() or not list((data / "spool" / "inbox").iterdir())
