"""The spool at scale (issue 17): what a queue of 10k / 100k / 1M waiting one-image tickets
costs the daemon, `sdgen status`, a claim, the split and the disk.

    python benchmarks/scale.py                 # 10k, 100k and 1M tickets (about 5 minutes)
    python benchmarks/scale.py --sizes 10000   # one size
    python benchmarks/scale.py --json out.json

Each size gets a fresh data directory filled the way users fill it: request files of at most
100,000 images (batch size 1) dropped into the inbox and taken by the daemon's own intake
(`Scheduler.tick`, no launcher: nothing can run them, as with `sdgen daemon --workers 0`).
Then, with everything waiting:

- split: seconds until the first ticket is claimable, and until intake is over (every
  request accepted, every ticket written or waiting in its split cursor);
- tick: the median of 20 steady ticks (nothing changes);
- idle CPU and RSS: a real `sdgen daemon --workers 0` over the spool for 20 s (psutil);
- start-up: from starting that daemon to its first tick ("daemon up" in its log);
- status: `collect()` in-process (median of 5) and `sdgen status --json` as a process;
- claim: the median of 50 claims reusing one listing (PendingView, as a worker does), and
  of 10 that list pending/ themselves (a worker's first claim, or one a second later);
- busy CPU: the same daemon with one dry-run worker taking tickets (`--workers 1`);
- disk: bytes allocated under spool/ (st_blocks) per waiting image, and per finished image
  (2,000 tickets taken through claim, done-marker and retire; then folded, where the code
  folds).

Run it from the checkout whose code you want measured: with `--before REV`, it also measures
the same sizes on a git worktree of REV (no split window there: every ticket is a file), side
by side in one run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PER_REQUEST = 100_000  # the request schema's most images per request


def _disk_bytes(folder: Path) -> int:
    """Bytes allocated to a file, or to a folder and everything in it."""
    if not folder.is_dir():
        try:
            return os.lstat(folder).st_blocks * 512
        except FileNotFoundError:
            return 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def measure(size: int, sample_s: float) -> dict:
    """Everything for one queue size, with the code importable as `sdgen` (this process)."""
    import psutil

    from sdgen.cli.status import collect
    from sdgen.daemon.scheduler import Scheduler
    from sdgen.spool.claim import PendingView, claim_next
    from sdgen.spool.store import Spool

    root = Path(tempfile.mkdtemp(prefix=f"sdgen-scale-{size}-")) / "data"
    spool = Spool(root).ensure()
    left, n = size, 0
    old = time.time() - 60  # quiet already: taken at the first tick
    while left:
        images = min(PER_REQUEST, left)
        path = spool.layout.inbox / f"r{n:03d}.yaml"
        path.write_text(f"prompt: scale {n}\nimages: {images}\nengine: dry-run\nwidth: 128\nheight: 128\nseed: 1\n")
        os.utime(path, (old, old))
        left -= images
        n += 1
    sched = Scheduler(spool, launcher=None)
    t0 = time.perf_counter()
    first = None
    ticks = 0
    while True:
        report = sched.tick(time.time())
        ticks += 1
        if first is None and spool.ticket_names("pending"):
            first = time.perf_counter() - t0
        # over when nothing more is to be written now: all out, or only full windows left
        if report.wake_in is None and not report.waiting_files:
            break
    split_s = time.perf_counter() - t0
    tick_times = []
    for _ in range(20):
        t = time.perf_counter()
        sched.tick(time.time())
        tick_times.append(time.perf_counter() - t)
    status_times = []
    for _ in range(5):
        t = time.perf_counter()
        rows = collect(spool)
        status_times.append(time.perf_counter() - t)
    waiting = sum(r.get("tickets_pending", 0) for r in rows)
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "sdgen", "status", "--json", "--data", str(root)], capture_output=True, text=True
    )
    status_cli = time.perf_counter() - t
    assert out.returncode == 0, out.stderr
    claims, relisting = [], []
    view = PendingView(spool)  # as a worker: one listing serves its claims for a second
    for i in range(50):
        t = time.perf_counter()
        claim = claim_next(spool, f"bench-{i}", view=view)
        claims.append(time.perf_counter() - t)
        claim.hand_back()
    for i in range(10):  # a claim that lists pending/ itself (a worker's first, or after a second)
        t = time.perf_counter()
        claim = claim_next(spool, f"bench-{i}")
        relisting.append(time.perf_counter() - t)
        claim.hand_back()
    disk = _disk_bytes(spool.layout.spool)
    files_in_pending = len(spool.ticket_names("pending"))
    daemon = _daemon_over(root, sample_s, psutil)
    busy = _daemon_over(root, sample_s, psutil, busy=True)
    done = _done_cost(spool, min(size, 2000))
    return {
        "tickets": size,
        "waiting": waiting,
        "requests": n,
        "first_claimable_s": first,
        "split_s": split_s,
        "intake_ticks": ticks,
        "tick_s": statistics.median(tick_times),
        "status_s": statistics.median(status_times),
        "status_cli_s": status_cli,
        "claim_ms": 1000 * statistics.median(claims),
        "claim_relist_ms": 1000 * statistics.median(relisting),
        **daemon,
        "busy_cpu": busy.get("idle_cpu"),
        **done,
        "disk_bytes_per_image": disk / size,
        "files_in_pending": files_in_pending,
        "code_from": str(Path(sys.modules["sdgen"].__file__).parent.parent),
    }


def _done_cost(spool, n: int) -> dict:
    """Spool bytes per finished image: `n` tickets taken through claim, done-marker and
    retire (as workers do), measured in done/, then folded into the ledger if this code
    folds (after issue 17)."""
    import json as _json

    from sdgen.spool.states import TicketState

    names = spool.ticket_names(TicketState.PENDING)[:n]
    for name in names:
        ticket = spool.read_ticket(TicketState.PENDING, name)
        if not spool.claim(name, b'{"worker": "bench"}'):
            continue
        marker = _json.loads(ticket.to_json())
        marker["result"] = {
            "worker": "bench-worker-0001",
            "host": "node-01",
            "pid": 12345,
            "attempt": 1,
            "finished_at": time.time(),
            "seconds": {"generate": 0.25, "write": 0.01, "total": 0.3},
            "images_made": len(ticket.images),
            "images_skipped": 0,
            "outputs": [
                {
                    "file": f"outputs/{ticket.request_id}/{im.prompt_index:04d}-{im.image_index:06d}-{im.seed}.png",
                    "seed": im.seed,
                    "prompt_index": im.prompt_index,
                    "image_index": im.image_index,
                    "sha256": "0" * 64,
                }
                for im in ticket.images
            ],
        }
        spool.finish(name, _json.dumps(marker, indent=1).encode())
        spool.retire(name)
    done_dir = spool.layout.tickets(TicketState.DONE)
    out = {"done_bytes_per_image_unfolded": _disk_bytes(done_dir) / max(1, len(names))}
    if hasattr(spool, "fold_done"):
        by_request: dict[str, list[str]] = {}
        for name in spool.ticket_names(TicketState.DONE):
            by_request.setdefault(name.split(".", 2)[2], []).append(name)
        for rid, batch in by_request.items():
            spool.fold_done(rid, batch)
        folded = sum(
            _disk_bytes(spool.layout.done_ledger(rid)) + _disk_bytes(spool.layout.folded(rid)) for rid in by_request
        )
        out["done_bytes_per_image_folded"] = (_disk_bytes(done_dir) + folded) / max(1, len(names))
    return out


def _daemon_over(root: Path, sample_s: float, psutil, busy: bool = False) -> dict:
    """A real `sdgen daemon --workers 0` holding the queue: start-up, idle CPU, RSS. Empty
    for code without `--workers 0` (before issue 17). With `busy`, one dry-run worker
    takes tickets all along (`--workers 1`): the daemon's CPU while the queue moves."""
    env = dict(os.environ, SDGEN_TRACKING="off", SDGEN_DRY_RUN_DELAY="0.02")
    log = root.parent / "daemon.log"
    with open(log, "w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "sdgen", "daemon", "--workers", "1" if busy else "0", "--no-tracking"]
            + ["--data", str(root)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        while "daemon up" not in log.read_text():
            if proc.poll() is not None:
                print(f"daemon exited: {log.read_text()[-300:]}", file=sys.stderr)
                return {}
            time.sleep(0.02)
        startup = time.perf_counter() - start
        time.sleep(3.0)  # let it settle (first ticks)
        p = psutil.Process(proc.pid)
        c0, w0 = p.cpu_times(), time.perf_counter()
        time.sleep(sample_s)
        c1, w1 = p.cpu_times(), time.perf_counter()
        return {
            "startup_s": startup,
            "idle_cpu": (c1.user + c1.system - c0.user - c0.system) / (w1 - w0),
            "rss_mb": p.memory_info().rss / 2**20,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def table(results: list[dict]) -> str:
    cols = [
        ("code", "{}"),
        ("tickets", "{:,}"),
        ("first_claimable_s", "{:.2f}"),
        ("split_s", "{:.2f}"),
        ("tick_s", "{:.4f}"),
        ("idle_cpu", "{:.1%}"),
        ("busy_cpu", "{:.1%}"),
        ("rss_mb", "{:.0f}"),
        ("startup_s", "{:.2f}"),
        ("status_s", "{:.3f}"),
        ("status_cli_s", "{:.2f}"),
        ("claim_ms", "{:.2f}"),
        ("claim_relist_ms", "{:.2f}"),
        ("disk_bytes_per_image", "{:.0f}"),
        ("done_bytes_per_image_unfolded", "{:.0f}"),
        ("done_bytes_per_image_folded", "{:.0f}"),
        ("files_in_pending", "{:,}"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--sample", type=float, default=20.0, help="seconds of daemon CPU sampled")
    ap.add_argument("--before", metavar="REV", help="also measure a git revision (a worktree of it)")
    ap.add_argument("--before-sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.sample)))
        return 0
    results = []
    runs = [("now", REPO, s) for s in args.sizes]
    if args.before:
        tree = Path(tempfile.mkdtemp(prefix="sdgen-before-")) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before], check=True)
        runs = [(args.before, tree, s) for s in args.before_sizes] + runs
    for code, tree, size in runs:
        # each measurement in its own process, importing the code under test from its tree
        env = dict(os.environ, PYTHONPATH=str(tree))
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--one", str(size), "--sample", str(args.sample)],
            env=env,
            cwd=tree,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{code} {size}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        result = dict(json.loads(out.stdout.strip().splitlines()[-1]), code=code)
        print(json.dumps(result), file=sys.stderr)
        results.append(result)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
