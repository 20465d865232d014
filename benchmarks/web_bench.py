"""`sdgen web`'s server time (issue 21): the queue page at 1,000 requests and a gallery page
of a 10,000-image request, measured in-process through the ASGI app (no network, no browser:
the time the server spends on one page).

    python benchmarks/web_bench.py                   # builds the spool in a temp folder (~1-2 min)
    python benchmarks/web_bench.py --data DIR        # keep (or reuse) the spool in DIR
    python benchmarks/web_bench.py --requests 200 --images 2000   # smaller

The spool is built the way the daemon and workers build it, with Spool functions and a
worker in this process: 1,000 requests accepted (4 images each; a tenth made by a dry-run
worker, the rest waiting), and one request of 10,000 dry-run images at 128x128 (batch 64)
made by the worker, its done-markers folded into the ledger as the daemon folds them.

Printed: for each page, the first call (cold: nothing cached) and the median of 9 more
with the one-look cache off (every call reads the spool again, as a poll a second later
does); the gallery's listing is kept per request until the request changes, so its warm
figure is the steady state and its cold one the first visit.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sdgen import defaults  # noqa: E402
from sdgen.spool.request import parse_request  # noqa: E402
from sdgen.spool.states import TicketState  # noqa: E402
from sdgen.spool.store import Spool, new_request_id  # noqa: E402
from tests.web.asgi import call  # noqa: E402

DRY = "engine: dry-run\nwidth: 128\nheight: 128\n"
BIG = "20261201-000000-b16b16"


def build(root: Path, requests: int, images: int) -> None:
    from sdgen.worker.loop import Worker

    spool = Spool(root).ensure()
    if spool.layout.request_file(BIG).exists():
        print(f"reusing the spool in {root}", file=sys.stderr)
        return
    t0 = time.monotonic()
    base = time.time() - requests
    for i in range(requests):
        text = DRY + f"prompt: request {i}\nimages: 4\nbatch_size: 4\nseed: {i}\nname: r{i}\n"
        spool.accept(new_request_id(base + i), parse_request(text), source="bench", now=time.time())
    worker = Worker(spool, "bench")
    for _ in range(requests // 10):  # a tenth done, the rest waiting
        worker.step()
    print(f"{requests} requests accepted, a tenth made: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    t0 = time.monotonic()
    # the big one first (highest priority), made whole by the worker
    text = DRY + f"prompt: a big one\nimages: {images}\nbatch_size: 64\nseed: 1\npriority: 1000\n"
    spool.accept(BIG, parse_request(text), source="bench", now=time.time())
    n = -(-images // 64)
    for _ in range(n):
        worker.step()
    names = [name for name in spool.ticket_names(TicketState.DONE) if name.endswith(BIG)]
    spool.fold_done(BIG, names)
    print(f"{images} images in {n} tickets made and folded: {time.monotonic() - t0:.1f} s", file=sys.stderr)


def timed(app, url: str, repeat: int = 9) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first = call(app, "GET", url)
    cold = time.perf_counter() - t0
    assert first.status == 200, (url, first.status, first.text[:300])
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        answer = call(app, "GET", url)
        times.append(time.perf_counter() - t0)
        assert answer.status == 200
    return cold * 1000, statistics.median(times) * 1000, len(first.body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="build (or reuse) the spool here")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("SDGEN_TRACKING", "off")
    holder = None
    if args.data is None:
        holder = tempfile.TemporaryDirectory(prefix="sdgen-web-bench-")
        args.data = Path(holder.name) / "data"
    build(args.data.resolve(), args.requests, args.images)

    from sdgen.web.app import Config, create_app

    defaults.WEB_LOOK_CACHE_SECONDS = 0.0  # every call looks at the spool again
    app = create_app(Config(root=args.data.resolve()))
    rows = []
    rows.append(("queue page `/` (first of 200 rows)", *timed(app, "/")))
    rows.append(("queue fragment (what a poll fetches)", *timed(app, "/fragments/queue")))
    rows.append(("`GET /api/requests` (all rows)", *timed(app, "/api/requests")))
    rows.append((f"gallery page 1 of the {args.images}-image request", *timed(app, f"/requests/{BIG}")))
    last = -(-args.images // defaults.WEB_GALLERY_PAGE_SIZE)
    rows.append((f"gallery page {last} (the last)", *timed(app, f"/requests/{BIG}?page={last}")))
    rows.append(
        (
            "full-size image page (PNG parameters, next/previous)",
            *timed(app, f"/requests/{BIG}/images/0000-000500-501.png"),
        )
    )
    t0 = time.perf_counter()
    for i in range(defaults.WEB_GALLERY_PAGE_SIZE):
        call(app, "GET", f"/thumbs/{BIG}/0000-{1000 + i:06d}-{1001 + i}.png")
    make = (time.perf_counter() - t0) * 1000 / defaults.WEB_GALLERY_PAGE_SIZE
    rows.append(
        ("one thumbnail, made (first view) / kept", make, *timed(app, f"/thumbs/{BIG}/0000-001000-1001.png")[1:])
    )
    cpu = platform.processor() or platform.machine()
    where = f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"
    print(f"\n{args.requests} requests + one of {args.images} images; {where}\n")
    print("| page | first call (ms) | median of 9 more (ms) | bytes |")
    print("|---|---|---|---|")
    for name, cold, warm, size in rows:
        print(f"| {name} | {cold:.1f} | {warm:.1f} | {size} |")
    if holder:
        holder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
