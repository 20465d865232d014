"""`sdgen daemon`, `sdgen worker` and the one-shot `sdgen run`."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time

from sdgen import defaults, settings
from sdgen.batch.templates import expand_prompts, wildcards_dir
from sdgen.cli.progress import RunProgress as _Progress
from sdgen.cli.submit import add_request_options, print_plan, queue, request_from_args
from sdgen.config import data_root
from sdgen.daemon.service import Daemon, daemon_lock_free
from sdgen.exceptions import DaemonRunning, UserError
from sdgen.launchers.registry import get_launcher
from sdgen.spool.states import RequestState
from sdgen.spool.store import Spool
from sdgen.tracking.loop import EventDrain, TrackerThread
from sdgen.worker.loop import Worker


def _positive(kind, zero: bool = False):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'above 0'}, got {text}")
        return value

    return parse


def _daemon_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        "--max-jobs",
        type=_positive(int, zero=True),
        metavar="N",
        help="most workers (local processes, ADSP or Slurm jobs) at once (default: one per GPU, else 1); "
        "0 launches none: the queue is held (accepted and scheduled) for workers started by hand or elsewhere",
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
    p.add_argument(
        "--split-window",
        type=_positive(int),
        default=defaults.SPLIT_WINDOW_TICKETS,
        metavar="N",
        help="tickets of a request kept written in pending/; the rest are written as workers take these",
    )
    p.add_argument(
        "--fold-after",
        type=float,
        default=defaults.FOLD_AFTER_SECONDS,
        metavar="S",
        help="fold done-markers older than this into their request's ledger (done.jsonl); -1: never",
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


def _operator_options(p: argparse.ArgumentParser) -> None:
    """Retention and notifications: `sdgen daemon` only. A `sdgen run` is watched by whoever
    started it (it prints the output folder and exits 0 when done), and its daemon may serve
    other requests of the spool too: a hook or webhook there would fire for those as well,
    and prune what a long-running daemon's operator chose to keep."""
    from sdgen.cli.cache import older_than
    from sdgen.daemon.notify import on_done_command, webhook_url

    g = p.add_argument_group("retention and notifications (the operator's; never from a request file)")
    g.add_argument(
        "--retain",
        type=older_than,
        metavar="AGE",
        help="remove the spool records (not the images) of requests that ended more than AGE ago "
        f"(30d, 12h, 90m, 3600s), checked every {defaults.RETAIN_EVERY_SECONDS / 3600:g} h; as `sdgen prune`",
    )
    g.add_argument(
        "--on-done",
        type=on_done_command,
        metavar="CMD",
        help="run CMD (split like shell words, no shell) when a request ends: SDGEN_REQUEST_ID, "
        "SDGEN_REQUEST_STATE, SDGEN_OUTPUTS, SDGEN_IMAGES_DONE, SDGEN_IMAGES_TOTAL ... in its "
        "environment, a JSON summary on stdin",
    )
    g.add_argument(
        "--webhook",
        type=webhook_url,
        metavar="URL",
        help="POST the JSON summary of each ended request to this http(s) URL, retried with backoff",
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
        spool,
        launcher,
        poll=args.poll,
        rescan=args.rescan,
        lease_timeout=args.lease_timeout,
        split_window=args.split_window,
        fold_after=args.fold_after,
        tracker=tracker,
        **kw,
    )


def cmd_daemon(args: argparse.Namespace) -> int:
    # every setting, before anything starts: the workers inherit them, and a bad one found
    # by a worker costs a ticket; here it costs one line
    settings.check()
    spool = Spool(data_root(args.data)).ensure()
    notifier = None
    if args.on_done or args.webhook:
        from sdgen.daemon.notify import Notifier

        notifier = Notifier(spool, command=args.on_done, webhook=args.webhook)
    daemon = _make_daemon(args, spool, exit_when_idle=args.exit_when_idle, notifier=notifier, retain=args.retain)
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


def cmd_run(args: argparse.Namespace) -> int:
    given = request_from_args(args)
    seed_drawn = given.seed is None
    request = given.with_seed()
    if args.plan:  # what it would make; nothing queued, nothing started
        return print_plan(args, request, seed_drawn)
    settings.check()  # as the daemon: before the request is queued
    spool = Spool(data_root(args.data)).ensure()
    request_id, queued = queue(spool, given, seeded=request)  # with --id: at most once
    if not queued:
        print(f"sdgen run: id {given.id!r} is request {request_id} already: following it", file=sys.stderr)
    images = expand_prompts(request, wildcards_dir(spool.layout.root)).images_total  # as the daemon will expand it
    print(f"request {request_id}: {images} image(s), seed {request.seed}", file=sys.stderr)
    progress = _Progress(spool, request_id)
    progress.take_logs(logging.getLogger().handlers)  # a log line never lands inside the bar
    stop = _Stop(spool, request_id, progress)
    # Until our daemon installs its handlers (and while following another's), a closed
    # terminal stops this run like Ctrl-C instead of killing it silently.
    signal.signal(signal.SIGHUP, stop.interrupt)
    try:
        return _run(args, spool, request_id, progress, stop)
    except KeyboardInterrupt:
        stop.signals.append(signal.SIGINT)
        return stop.report(args, following=True)
    finally:
        progress.close()  # a terminal gets its cursor back whatever happened


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
            progress.break_line()
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
    _operator_options(p)
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
