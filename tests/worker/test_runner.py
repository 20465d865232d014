"""How the runner writes images into outputs/, a folder other people can write to."""

import hashlib
import json
import os
import socket

from PIL import Image

from sdgen.spool.request import parse_request
from sdgen.worker.loop import Worker

RID = "20261126-000000-aaaaaa"


def test_a_symlink_planted_at_the_part_name_redirects_nothing(spool, tmp_path):
    spool.accept(
        RID,
        parse_request("prompt: a fox\nimages: 2\nbatch_size: 2\nseed: 10\nengine: dry-run\nwidth: 128\nheight: 128\n"),
        source="t",
        now=0.0,
    )
    out = spool.layout.output_dir(RID)
    out.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # The worker runs in this process: its part names carry this host and pid.
    planted = [out / f".0000-{i:06d}-{10 + i}.png.{socket.gethostname()}.{os.getpid()}.part" for i in range(2)]
    for p in planted:
        p.symlink_to(victim)
    (out / "metadata.jsonl").symlink_to(victim)  # nor at the dataset's metadata: its lines are lost, not the ticket
    outcome = Worker(spool, "w1").step()
    assert outcome.state == "done" and outcome.images_made == 2
    assert victim.read_text() == "precious" and not victim.is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [
        "0000-000000-10.png",
        "0000-000001-11.png",
        "index.csv",
        "index.json",
        "metadata.jsonl",
    ]
    [name] = spool.ticket_names("done")
    for o in json.loads(spool.layout.ticket("done", name).read_text())["result"]["outputs"]:
        path = spool.layout.root / o["file"]
        assert not path.is_symlink() and hashlib.sha256(path.read_bytes()).hexdigest() == o["sha256"]
        with Image.open(path) as img:
            assert img.size == (128, 128)
