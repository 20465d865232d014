"""Soak and chaos harness: faults, hostile input and scale, with the dry-run engine, real
processes and real signals. Prints figures; `--json FILE` keeps them.

    python benchmarks/soak.py faults  [--trials 20]      workers/daemon SIGKILLed, SIGTERM + restart
    python benchmarks/soak.py hostile [--files 300]      a corpus of bad files beside valid work
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
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from sdgen.spool.request import parse_request  # noqa: E402
from sdgen.spool.store import Spool  # noqa: E402

FAST = ["--rescan", "0.3", "--lease-timeout", "3", "--worker-idle-exit", "2"]


def env_for(data: Path, **extra) -> dict:
    env = dict(os.environ, SDGEN_DATA=str(data), SDGEN_TRACKING="off", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sdgen(data: Path, *args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdgen", *args], env=env_for(data, **extra),
                          capture_output=True, text=True, timeout=600)


def start_daemon(data: Path, *args, **extra) -> subprocess.Popen:
    """Start a daemon and wait until it holds the data directory (a signal sent during its
    imports would only test Python's default handler)."""
    log = open(data.parent / "daemon.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "sdgen", "daemon", *args], env=env_for(data, **extra),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = data / "spool" / "daemon.json"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(info.read_text())["pid"] == proc.pid:
                break
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    return proc


def workers_of(data: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "worker" in cmd and str(data) in cmd:
            out.append(p)
    return out


def submit_many(data: Path, requests: int, images: int, batch: int) -> dict[str, int]:
    expected = {}
    for i in range(requests):
        rid = sdgen(data, "submit", "--engine", "dry-run", "--width", "128", "--height", "128",
                    "--prompt", f"soak {i}", "--images", str(images), "--batch-size", str(batch),
                    "--seed", str(1000 * i)).stdout.strip()
        expected[rid] = images
    return expected


def audit(data: Path, expected: dict[str, int]) -> dict:
    """Count images expected, produced, lost and duplicated; tickets held without a reason."""
    spool = Spool(data)
    produced = lost = duplicated = 0
    for rid, n in expected.items():
        files = sorted(p.name for p in (data / "outputs" / rid).glob("*.png")) if (data / "outputs" / rid).exists() else []
        names = set(files)
        request = spool.read_request(rid)
        want = {f"0000-{i:06d}-{(request.seed + i) % 2**32}.png" for i in range(n)}
        produced += len(names & want)
        lost += len(want - names)
        duplicated += len(names - want) + (len(files) - len(names))
    markers = {}
    for name in spool.ticket_names("done"):
        markers[name] = markers.get(name, 0) + 1
    double_markers = sum(1 for c in markers.values() if c > 1)
    held_without_reason = 0
    for state in ("held", "failed"):
        for name in spool.ticket_names(state):
            if not spool.read_ticket(state, name).reason:
                held_without_reason += 1
    rework = mismatched = 0
    for name in spool.ticket_names("done"):
        t = spool.read_ticket("done", name)
        rework += t.attempt
        marker = json.loads(spool.layout.ticket("done", name).read_text())
        for o in marker.get("result", {}).get("outputs", []):
            f = data / o["file"]
            if not f.exists() or hashlib.sha256(f.read_bytes()).hexdigest() != o["sha256"]:
                mismatched += 1
    return {"expected": sum(expected.values()), "produced": produced, "lost": lost,
            "duplicated": duplicated + double_markers, "held_without_reason": held_without_reason,
            "tickets_rerun_after_a_fault": rework, "images_not_as_their_marker_says": mismatched,
            "stray_part_files": len(list((data / "outputs").rglob("*.part")))}


def wait_idle(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return -999


# -- faults --------------------------------------------------------------------------------
def faults(trials: int, requests: int, images: int, quick: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sdgen-soak-"))
    data = root / "data"
    expected = submit_many(data, requests, images, 3)
    delay = 0.02
    rng = random.Random(7)
    daemon = start_daemon(data, "--workers", "3", *FAST, SDGEN_DRY_RUN_DELAY=delay)
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
    final = start_daemon(data, "--workers", "3", "--exit-when-idle", *FAST)
    code = wait_idle(final, 600)
    result = {"trials": trials, **kills, "final_exit": code,
              "daemon_died_unasked": daemon_deaths_unexplained, **audit(data, expected)}
    return result


# -- hostile input -------------------------------------------------------------------------
def hostile_corpus(n: int, rng: random.Random) -> list[tuple[str, bytes]]:
    makers = [
        lambda i: (f"syntax-{i}.yaml", b"prompt: [unclosed " + str(i).encode()),
        lambda i: (f"list-{i}.yaml", b"- a\n- b\n"),
        lambda i: (f"types-{i}.yaml", b"prompt: a\nimages: many\nsteps: [1]\n"),
        lambda i: (f"range-{i}.yaml", f"prompt: a\nimages: {rng.choice([0, -5, 10**9])}\nwidth: 333\n".encode()),
        lambda i: (f"unknown-{i}.yaml", b"prompt: a\nnegative: x\n"),
        lambda i: (f"bomb-{i}.yaml", b"a: &a [x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b]\n"),
        lambda i: (f"tag-{i}.yaml", b"prompt: !!python/object/apply:os.system ['echo pwned']\n"),
        lambda i: (f"huge-{i}.yaml", b"prompt: " + b"x" * (2 * 1024 * 1024)),
        lambda i: (f"binary-{i}.yaml", bytes(rng.randrange(256) for _ in range(4096))),
        lambda i: (f"empty-{i}.yaml", b""),
        lambda i: (f"dots..{i}.yaml", b"prompt: a\n"),
        lambda i: (f"nul-{i}.yaml", b"prompt: a\x00b\n"),
    ]
    return [makers[i % len(makers)](i) for i in range(n)]


def hostile(files: int, quick: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sdgen-hostile-"))
    data = root / "data"
    expected = submit_many(data, 3, 12 if quick else 60, 2)
    daemon = start_daemon(data, "--workers", "2", *FAST, SDGEN_DRY_RUN_DELAY=0.01)
    time.sleep(1.0)
    proc = psutil.Process(daemon.pid)
    rss_before = proc.memory_info().rss
    rng = random.Random(3)
    inbox = data / "spool" / "inbox"
    corpus = hostile_corpus(files, rng)
    outside = root / "outside.yaml"
    outside.write_text("prompt: untouched\n")
    dropped = len(corpus)  # counted as dropped: the daemon may quarantine a link before a glob sees it
    for k, (name, body) in enumerate(corpus):
        (inbox / name).write_bytes(body)
        if k % 25 == 0:
            os.symlink(outside, inbox / f"link-{k}.yaml")
            dropped += 1
        if k % 50 == 0:  # a file "still being written": a .part name, renamed later
            (inbox / f"slow-{k}.yaml.part").write_bytes(b"prompt: [half")
            dropped += 1
    for part in inbox.glob("*.part"):
        os.rename(part, part.with_suffix(""))  # completes as a (bad) request
    rss_peak = rss_before
    deadline = time.time() + 300
    while time.time() < deadline:
        rss_peak = max(rss_peak, proc.memory_info().rss)
        left = [p for p in inbox.iterdir() if not p.name.startswith(".")]
        if not left:
            break
        time.sleep(0.2)
    final = start_daemon  # the same daemon finishes the valid work
    daemon.send_signal(signal.SIGTERM)
    wait_idle(daemon, 60)
    last = final(data, "--workers", "2", "--exit-when-idle", *FAST)
    code = wait_idle(last, 300)
    rejected = [p for p in (data / "spool" / "rejected").iterdir() if not p.name.endswith(".reason")]
    with_reason = [p for p in rejected if (p.parent / (p.name + ".reason")).exists()]
    return {"bad_files_dropped": dropped, "quarantined": len(rejected), "with_reason": len(with_reason),
            "inbox_left": len(list(inbox.iterdir())), "outside_file_untouched": outside.read_text() == "prompt: untouched\n",
            "daemon_rss_mb_before": round(rss_before / 2**20, 1), "daemon_rss_mb_peak": round(rss_peak / 2**20, 1),
            "final_exit": code, **audit(data, expected)}


# -- scale ---------------------------------------------------------------------------------
def claim_throughput(workers: int, tickets: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="sdgen-claim-"))
    spool = Spool(root / "data").ensure()
    per = 10
    r = parse_request(f"prompt: a\nimages: {per}\nengine: dry-run\nwidth: 128\nheight: 128\nseed: 1\n")
    for i in range(tickets // per):
        spool.accept(f"20261126-000000-{i:06x}", r, "bench", 0.0)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "sdgen", "--data", str(spool.layout.root), "worker",
                               "--idle-exit", "0.5"], env=env_for(spool.layout.root),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
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
        (inbox / f".r{i}.part").write_text(f"prompt: a\nimages: 1\nengine: dry-run\nwidth: 128\nheight: 128\nseed: {i}\n")
        t0 = time.perf_counter()
        os.rename(inbox / f".r{i}.part", inbox / f"r{i}.yaml")
        while True:
            spool = Spool(data)
            if any(spool.ticket_names(s) for s in ("running", "done")) and \
                    len(spool.ticket_names("running")) + len(spool.ticket_names("done")) > i:
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
    code = ("import time,sys,resource; sys.path.insert(0, sys.argv[2]); t=time.perf_counter();"
            "from sdgen.spool.store import Spool; from sdgen.daemon.scheduler import Scheduler;"
            "s=Spool(sys.argv[1]); s.reconcile(); Scheduler(s, None).tick(time.time());"
            "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    out = subprocess.run([sys.executable, "-c", code, str(spool.layout.root), str(REPO)],
                         capture_output=True, text=True, check=True).stdout.split()
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
    return {"requests": requests, "tickets": requests * per_request, "fill_s": round(fill, 1),
            "daemon_start_s": round(start_s, 2), "daemon_start_rss_mb": round(rss_mb, 1),
            "status_json_s": round(status_s, 2), "steady_tick_s": round(tick_s, 3),
            "claim_ms_reusing_listing": round(with_view * 1000, 2), "claim_ms_relisting": round(relisting * 1000, 2)}


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
    return {"tickets": n, "engine_s_per_ticket": round(gen / n, 3),
            "worker_overhead_s_per_ticket": round((total - gen) / n, 4),
            "end_to_end_s_per_ticket": round(wall / n, 3),
            "overhead_fraction_in_worker": round((total - gen) / total, 4)}


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
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    results = {}
    if a.what in ("faults", "all"):
        results["faults"] = faults(4 if a.quick else a.trials, 3 if a.quick else 6, 12 if a.quick else 60, a.quick)
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
