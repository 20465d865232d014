"""`sdgen daemon`, `sdgen worker` and the one-shot `sdgen run`."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import sys
import time

from sdgen import defaults, settings
from sdgen.cli.submit import add_request_options, request_from_args
from sdgen.config import data_root
from sdgen.daemon.service import Daemon, daemon_lock_free
from sdgen.exceptions import DaemonRunning, UserError
from sdgen.launchers.registry import get_launcher
from sdgen.spool.progress import summarize
from sdgen.spool.states import REQUEST_TERMINAL, RequestState, TicketState
from sdgen.spool.store import Spool
from sdgen.tracking.loop import EventDrain, TrackerThread
from sdgen.worker.loop import Worker


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def _daemon_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        "--max-jobs",
        type=_positive(int),
        metavar="N",
        help="most workers (local processes, ADSP or Slurm jobs) at once (default: one per GPU, else 1)",
    )
    p.add_argument(
        "--launcher",
        default="local",
        choices=["local", "adsp", "slurm"],
        help="where workers run: local processes, ADSP run-once jobs or Slurm batch jobs",
    )
    p.add_argument("--adsp-project", metavar="ID", help="ADSP project for the jobs (default: this session's)")
    p.add_argument(
        "--adsp-resource-profile",
        metavar="NAME",
        help="resource profile of the jobs (`sdgen adsp profiles` lists them)",
    )
    p.add_argument("--adsp-keep-jobs", action="store_true", help="keep finished ADSP jobs and runs")
    g = p.add_argument_group("Slurm jobs (--launcher slurm)")
    g.add_argument("--slurm-partition", metavar="NAME")
    g.add_argument("--slurm-gres", metavar="SPEC", help="e.g. gpu:1")
    g.add_argument("--slurm-gpus", metavar="SPEC", help="sbatch --gpus, e.g. 1 or a100:1")
    g.add_argument(
        "--slurm-time",
        metavar="LIMIT",
        help="time limit per job, e.g. 4:00:00; a job that reaches it hands its tickets back through their leases",
    )
    g.add_argument("--slurm-account", metavar="NAME")
    g.add_argument("--slurm-qos", metavar="NAME")
    g.add_argument("--slurm-cpus", type=_positive(int), metavar="N", help="--cpus-per-task")
    g.add_argument("--slurm-mem", metavar="SIZE", help="e.g. 32G")
    g.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more sbatch argument, verbatim (repeatable), e.g. --slurm-arg=--constraint=a100",
    )
    g.add_argument(
        "--slurm-python",
        metavar="PATH",
        help="python with sdgen installed, as the compute "
        "nodes see it (default: the daemon's own, which suits a shared software tree)",
    )
    g.add_argument(
        "--slurm-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this variable of the daemon's environment to every job (repeatable); credentials are refused",
    )
    p.add_argument(
        "--poll",
        action="store_true",
        help="no file watcher, rescans only (for NFS: other hosts' writes make no events)",
    )
    p.add_argument(
        "--rescan",
        type=_positive(float),
        default=defaults.RESCAN_SECONDS,
        metavar="S",
        help=f"seconds between full rescans (default {defaults.RESCAN_SECONDS})",
    )
    p.add_argument(
        "--lease-timeout",
        type=_positive(float),
        default=defaults.LEASE_TIMEOUT_SECONDS,
        metavar="S",
        help="reclaim a ticket whose lease is silent this long",
    )
    p.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow (also: SDGEN_TRACKING=off)")
    p.add_argument(
        "--system-metrics",
        action="store_true",
        help="workers sample CPU, memory and GPU use into each ticket's MLflow run",
    )
    p.add_argument(
        "--log-images",
        choices=["all", "sample", "none"],
        default="all",
        help="images attached to each ticket's MLflow run (default all)",
    )
    p.add_argument(
        "--worker-idle-exit",
        type=_positive(float),
        default=defaults.WORKER_IDLE_EXIT_SECONDS,
        metavar="S",
        help="workers exit after the spool was idle this long",
    )


def _one_line(text: str) -> str:
    """A reason for stderr: one line, control characters shown as escapes (it may quote what
    sbatch or a worker printed)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(str(text).split()))


def _make_daemon(args, spool: Spool, **kw) -> Daemon:
    # Workers beat four times per lease timeout, so one late beat never costs a ticket.
    options = dict(
        data_root=spool.layout.root,
        max_workers=args.workers,
        idle_exit=args.worker_idle_exit,
        heartbeat=args.lease_timeout / 4,
    )
    if args.launcher == "adsp":
        options.update(
            project=args.adsp_project, resource_profile=args.adsp_resource_profile, keep_jobs=args.adsp_keep_jobs
        )
    elif args.launcher == "slurm":
        from sdgen.launchers.slurm import JobOptions

        options["job_options"] = JobOptions(
            partition=args.slurm_partition,
            gres=args.slurm_gres,
            gpus=args.slurm_gpus,
            time_limit=args.slurm_time,
            account=args.slurm_account,
            qos=args.slurm_qos,
            cpus=args.slurm_cpus,
            mem=args.slurm_mem,
            extra=tuple(args.slurm_arg),
            env=tuple(args.slurm_env),
            python=args.slurm_python,
        )
    else:
        options["extra_env"] = {"SDGEN_SYSTEM_METRICS": "1"} if args.system_metrics else None
    launcher = get_launcher(args.launcher, **options)
    # No tracking: events are drained (deleted) instead of kept forever in spool/events.
    tracker = EventDrain(spool)
    if not args.no_tracking and settings.get("SDGEN_TRACKING"):
        tracker = TrackerThread(spool, launcher=args.launcher, images=args.log_images)
    return Daemon(
        spool, launcher, poll=args.poll, rescan=args.rescan, lease_timeout=args.lease_timeout, tracker=tracker, **kw
    )


def cmd_daemon(args: argparse.Namespace) -> int:
    # every setting, before anything starts: the workers inherit them, and a bad one found
    # by a worker costs a ticket; here it costs one line
    settings.check()
    spool = Spool(data_root(args.data)).ensure()
    daemon = _make_daemon(args, spool, exit_when_idle=args.exit_when_idle)
    code = daemon.run()
    if code:
        print(f"sdgen daemon: error: {_one_line(daemon.exit_reason)}", file=sys.stderr)
    return code


def cmd_worker(args: argparse.Namespace) -> int:
    root = data_root(args.data)
    spool = Spool(root)
    if not spool.layout.spool.is_dir():
        # a mistyped --data would otherwise make a new, empty spool and idle there unnoticed
        raise UserError(
            f"no spool in {root}: check --data or SDGEN_DATA, or start "
            f"`sdgen daemon --data {root}` (or `sdgen submit`) there first"
        )
    # The worker's own settings (its options win); the engine's are checked when it makes
    # an engine, so that a bad one fails the ticket with its reason (Worker.engine).
    idle_exit = args.idle_exit or settings.get("SDGEN_IDLE_EXIT")
    heartbeat = args.heartbeat or settings.get("SDGEN_HEARTBEAT")
    worker_id = args.worker_id or settings.get("SDGEN_WORKER_ID")
    worker = Worker(spool.ensure(), worker_id, heartbeat_seconds=heartbeat)
    return worker.work(idle_exit=idle_exit, max_tickets=args.max_tickets)


class _Progress:
    """Progress of one request on stderr: images done, rate, ETA, and before the first image
    what is happening (a worker starting, the model being built). On a terminal a bar
    redrawn in place; elsewhere (a pipe, a log file) whole lines: one per change, at most one
    every PLAIN_EVERY seconds, and always the final one."""

    PLAIN_EVERY = defaults.PROGRESS_PLAIN_EVERY_SECONDS

    def __init__(self, spool: Spool, request_id: str, stream=sys.stderr):
        self.spool, self.request_id, self.stream = spool, request_id, stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.started = time.monotonic()
        self.first_done: tuple[float, int] | None = None
        self.row: dict | None = None
        self.last_key: tuple | None = None
        self.last_printed = float("-inf")
        self.mid_line = False  # a bar is on screen without its newline (tty only)
        self.last_text = ""

    def _phase(self, row: dict, counts: dict) -> str:
        """Before the first image: what the spool says is going on."""
        if row["images_done"] or row["state"] in REQUEST_TERMINAL:
            return ""
        if counts.get(TicketState.RUNNING):
            # a worker claimed a ticket: it builds (or loads) the model, compiles, then
            # makes the first image; on a GPU that takes a minute or so
            return "building the model, compiling, first image"
        if self.spool.worker_count() and self.spool.layout.launcher_status.exists():
            return "starting a worker"
        return "waiting for the daemon"

    def update(self, *_):
        meta = self.spool.read_state(self.request_id)
        if meta is None:
            return
        counts = self.spool.ticket_counts().get(self.request_id, {})
        self.row = row = summarize(meta, counts, self.spool.is_cancelled(self.request_id))
        done, total = row["images_done"], row["images_total"]
        now = time.monotonic()
        if done and self.first_done is None:
            self.first_done = (now, done)
        rate = eta = ""
        if self.first_done and done > self.first_done[1] and now > self.first_done[0]:
            r = (done - self.first_done[1]) / (now - self.first_done[0])
            rate = f" {r:.2f} img/s"
            eta = f" ETA {max(0, total - done) / r:.0f}s"
        final = row["state"] in REQUEST_TERMINAL
        phase = self._phase(row, counts)
        what = (
            f"({row['state']}{': ' + phase if phase else ''}, {now - self.started:.0f}s)"
            if phase
            else f"({row['state']})"
        )
        key = (done, total, row["state"], phase)
        if final and self.last_key is not None and self.last_key[2] == row["state"]:
            return  # the final line is printed once
        if self.tty:
            # Cut to the terminal's width: a line that wraps cannot be redrawn by \r, and
            # every redraw would scroll a new line (an 80-column terminal during the build).
            columns = shutil.get_terminal_size((80, 24)).columns
            width = max(10, min(30, columns // 4))
            filled = int(width * done / total) if total else 0
            bar = "#" * filled + "-" * (width - filled)
            line = f"[{bar}] {done}/{total} images{rate}{eta} {what}"
            if len(line) > columns - 1:
                line = line[: max(0, columns - 2)] + "…"
            text = f"\r{line}\033[K"
            if text != self.last_text or self.mid_line is False:
                self._write(text + ("\n" if final else ""))
            self.mid_line, self.last_text, self.last_key = not final, text, key
        elif key != self.last_key and (final or now - self.last_printed >= self.PLAIN_EVERY):
            # one whole line per change, no \r: a log file reads as a log
            self._write(f"{done}/{total} images{rate}{eta} {what}\n")
            self.last_key, self.last_printed = key, now

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away (SIGHUP): keep going silently
            pass

    def break_line(self) -> None:
        """End a bar that is mid-line, so that what is printed next starts a line of its own."""
        if self.mid_line:
            self.mid_line = False
            self._write("\n")

    def log_filter(self, record) -> bool:
        """A logging filter on the stderr handler: a log line never lands inside the bar."""
        self.break_line()
        return True

    def finished(self, *_) -> bool:
        return bool(self.row) and self.row["state"] in REQUEST_TERMINAL


def cmd_run(args: argparse.Namespace) -> int:
    settings.check()  # as the daemon: before the request is queued
    request = request_from_args(args).with_seed()
    spool = Spool(data_root(args.data)).ensure()
    request_id = spool.submit(request, time.time())
    print(f"request {request_id}: {request.images_total} image(s), seed {request.seed}", file=sys.stderr)
    progress = _Progress(spool, request_id)
    for handler in logging.getLogger().handlers:  # a log line never lands inside the bar
        handler.addFilter(progress.log_filter)
    stop = _Stop(spool, request_id, progress)
    # Until our daemon installs its handlers (and while following another's), a closed
    # terminal stops this run like Ctrl-C instead of killing it silently.
    signal.signal(signal.SIGHUP, stop.interrupt)
    try:
        return _run(args, spool, request_id, progress, stop)
    except KeyboardInterrupt:
        stop.signals.append(signal.SIGINT)
        return stop.report(args, following=True)


def _run(args, spool: Spool, request_id: str, progress: "_Progress", stop: "_Stop") -> int:
    # The run that holds the data directory runs its daemon until the whole queue is idle,
    # not just until its own request is done: other `sdgen run`s may be following it. A run
    # that follows another's daemon takes over when that daemon exits with this request
    # unfinished (its owner was killed, or it ended before this request was accepted).
    following = False
    while True:
        try:
            daemon = _make_daemon(args, spool, exit_when_idle=True, on_tick=progress.update, on_signal=stop.on_signal)
            code = daemon.run()
        except DaemonRunning:
            if not following:
                print("a daemon already runs on this data directory: following its progress", file=sys.stderr)
                following = True
            if _follow(spool, progress):
                break
            print("that daemon has exited with this request unfinished: taking over", file=sys.stderr)
            continue
        if stop.signals:  # the daemon stopped on Ctrl-C / SIGHUP / SIGTERM: say what became of the request
            return stop.report(args)
        if code:
            print(f"sdgen run: error: {_one_line(daemon.exit_reason)}", file=sys.stderr)
            return code
        break
    progress.update()
    row = progress.row or {}
    state = row.get("state", "unknown")
    if state == RequestState.DONE:
        print(spool.layout.output_dir(request_id))
        return 0
    meta = spool.read_state(request_id) or {}
    raise_msg = meta.get("reason") or state
    print(f"request {request_id} {state}: {raise_msg} (`sdgen status {request_id}` for details)", file=sys.stderr)
    return 1


class _Stop:
    """Ctrl-C in `sdgen run`: once stops (workers hand their tickets back, the request stays
    queued, and the run says how to resume or cancel it); a second Ctrl-C, during that stop,
    cancels the request as `sdgen cancel` does. SIGHUP and SIGTERM count as the first."""

    def __init__(self, spool: Spool, request_id: str, progress: "_Progress"):
        self.spool, self.request_id, self.progress = spool, request_id, progress
        self.signals: list[int] = []
        self.cancelled = ""

    def interrupt(self, signum, frame):
        """Before a daemon of ours runs, or while following another's: leave at once."""
        raise KeyboardInterrupt

    def _say(self, text: str) -> None:
        # os.write, not print: this runs inside a signal handler, maybe while the main
        # thread is in the middle of a print (re-entering a buffered stream raises)
        try:
            os.write(2, (text + "\n").encode())
        except OSError:  # the terminal is gone (SIGHUP)
            pass

    def on_signal(self, signum: int) -> None:
        self.signals.append(signum)
        self.progress.break_line()
        if len(self.signals) == 1:
            self._say(
                f"stopping: workers hand their tickets back (up to {defaults.SHUTDOWN_GRACE_SECONDS:g}s); "
                f"request {self.request_id} stays queued; Ctrl-C again to cancel it"
            )
        elif signum == signal.SIGINT and self.signals.count(signal.SIGINT) >= 2 and not self.cancelled:
            from sdgen.cli.admin import cancel_request

            try:
                self.cancelled = cancel_request(self.spool, self.request_id)
            except Exception as e:  # noqa: BLE001 - in a signal handler: one line, never a traceback
                self._say(f"could not cancel {self.request_id}: {_one_line(e)}; run `sdgen cancel {self.request_id}`")
            else:
                self._say(f"second Ctrl-C: {self.cancelled}")

    def report(self, args, following: bool = False) -> int:
        """The last line of a stopped run; the exit code is 128 + the first signal (130 for
        Ctrl-C), as a shell reports a process killed by it."""
        self.progress.break_line()
        rid = self.request_id
        data = f" --data {shlex.quote(str(args.data))}" if args.data else ""
        if self.cancelled:
            print(
                f"sdgen run: stopped; request {rid} is cancelled "
                f"(images made so far: {self.spool.layout.output_dir(rid)})",
                file=sys.stderr,
            )
        elif following:
            print(
                f"sdgen run: stopped following; request {rid} stays queued for the daemon that runs on "
                f"this data directory (`sdgen{data} status {rid}`); cancel it with `sdgen{data} cancel {rid}`",
                file=sys.stderr,
            )
        else:
            print(
                f"sdgen run: stopped; request {rid} stays queued: resume it with "
                f"`sdgen{data} daemon --exit-when-idle` (or any `sdgen daemon` / `sdgen run` on this data "
                f"directory), or cancel it with `sdgen{data} cancel {rid}`",
                file=sys.stderr,
            )
        return 128 + self.signals[0]


def _follow(spool: Spool, progress: _Progress) -> bool:
    """Follow another daemon's progress: True once the request has finished, False as soon
    as no daemon holds the data directory any more."""
    while True:
        progress.update()
        if progress.finished():
            return True
        if daemon_lock_free(spool):
            progress.update()  # it may have finished the request on its way out
            return progress.finished()
        time.sleep(defaults.PROGRESS_FOLLOW_SECONDS)


def register(sub) -> None:
    p = sub.add_parser("daemon", help="run the scheduler daemon")
    _daemon_options(p)
    p.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit 0 once nothing is pending or running, after ending every worker (Slurm "
        "and ADSP jobs included); exit 4 when launching is blocked (workers fail at "
        "start-up, sbatch refuses jobs) and no worker is left, 1 when jobs could not be removed",
    )
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("worker", help="run a worker (the daemon starts these)")
    # The defaults come from the environment in cmd_worker, not here: building the parser
    # must not read a setting, or a bad one would break every command, even `sdgen status`.
    p.add_argument("--max-tickets", type=_positive(int), metavar="N", help="exit after N tickets")
    p.add_argument(
        "--idle-exit",
        type=_positive(float),
        metavar="S",
        help=f"exit after the spool was idle this long ($SDGEN_IDLE_EXIT, else {defaults.WORKER_IDLE_EXIT_SECONDS:g})",
    )
    p.add_argument(
        "--worker-id", metavar="ID", help="id written into leases ($SDGEN_WORKER_ID; default: host-pid-random)"
    )
    p.add_argument(
        "--heartbeat",
        type=_positive(float),
        metavar="S",
        help=f"seconds between lease renewals ($SDGEN_HEARTBEAT, else {defaults.HEARTBEAT_SECONDS:g}); "
        "keep it well under the daemon's --lease-timeout",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("run", help="submit a request and process it in the foreground")
    add_request_options(p)
    _daemon_options(p)
    p.set_defaults(func=cmd_run)
