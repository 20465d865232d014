"""`sdgen run`'s progress on stderr: images done, rate, ETA, and before the first image what
is happening (a worker starting, the model being built).

On a terminal: a rich live display (a bar and that line) redrawn in place, with the daemon's
log lines printed above it, never into it. Anywhere else (a pipe, a log file): whole lines,
no carriage returns or escape codes, one per change, at most one every PLAIN_EVERY seconds,
and always the final one.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

from sdgen import defaults
from sdgen.cli.rate import RateMeter, eta_text, rate_text
from sdgen.spool.progress import summarize
from sdgen.spool.states import REQUEST_TERMINAL, TicketState
from sdgen.spool.store import Spool


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar_width(columns: int) -> int:
    """The bar's share of a line: a quarter of the terminal, 10 to 30 columns."""
    return max(10, min(30, columns // 4))


def progress_line(done: int, total: int, rate: float | None, eta: float | None, what: str) -> str:
    """`3/12 images 4.00 img/s ETA 2s (running)`: the same words on a terminal and in a log."""
    return (
        f"{done}/{total} images"
        + (f" {rate_text(rate)}" if rate is not None else "")
        + (f" ETA {eta_text(eta)}" if eta is not None else "")
        + f" {what}"
    )


class RunProgress:
    PLAIN_EVERY = defaults.PROGRESS_PLAIN_EVERY_SECONDS

    def __init__(self, spool: Spool, request_id: str, stream=None):
        self.spool, self.request_id = spool, request_id
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream)
        self.started = time.monotonic()
        self.meter = RateMeter()
        self.row: dict | None = None
        self.last_key: tuple | None = None
        self.last_printed = float("-inf")
        self.console = None  # rich's Console on the terminal, made at the first draw
        self.live = None  # the rich Live display while it is on screen

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
        self.row = row = summarize(
            meta, counts, self.spool.is_cancelled(self.request_id), self.spool.is_paused(self.request_id)
        )
        done, total = row["images_done"], row["images_total"]
        now = time.monotonic()
        self.meter.sample(now, done)
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
        line = progress_line(done, total, self.meter.rate(now), self.meter.eta(now, total), what)
        if self.tty:
            self._draw(done, total, line, final)
            self.last_key = key
        elif key != self.last_key and (final or now - self.last_printed >= self.PLAIN_EVERY):
            # one whole line per change, no \r: a log file reads as a log
            self._write(line + "\n")
            self.last_key, self.last_printed = key, now

    def _draw(self, done: int, total: int, line: str, final: bool) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        # One column short of the terminal, and never wrapped: a line that wraps scrolls at
        # every redraw (an 80-column terminal during the build). Looked up at every draw, so
        # a resized window is followed.
        columns = shutil.get_terminal_size((80, 24)).columns
        if self.console is None:
            self.console = Console(file=self.stream, force_terminal=True, highlight=False)
        self.console.width = width = max(20, columns - 1)
        bar = bar_width(columns)
        # Text, never markup: nothing in the line is read as [style] tags. Cut here, so that
        # the table never narrows the bar to make the line fit.
        text = Text(line, no_wrap=True)
        text.truncate(max(1, width - bar - 1), overflow="ellipsis")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=bar, no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_row(ProgressBar(total=max(total, 1), completed=done, width=bar), text)
        try:
            if self.live is None:
                # stdout stays ours (the output folder is printed there); stderr printed
                # meanwhile (print(..., file=sys.stderr)) goes above the display
                self.live = Live(
                    grid, console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=True
                )
                self.live.start(refresh=True)
            else:
                self.live.update(grid, refresh=True)
        except (OSError, ValueError):  # the terminal went away (SIGHUP): keep going silently
            pass
        if final:
            self.break_line()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away (SIGHUP): keep going silently
            pass

    def break_line(self) -> None:
        """Leave the display where it is (its last state stays on screen) so that what is
        printed next starts a line of its own; the next update draws a new one below."""
        live, self.live = self.live, None
        if live is not None:
            try:
                live.stop()
            except (OSError, ValueError):
                pass

    close = break_line

    def take_logs(self, handlers) -> None:
        """Log lines of the handlers writing to our stream go above the display while it is
        on screen, not into it."""
        for handler in handlers:
            if getattr(handler, "stream", None) is self.stream:
                handler.addFilter(_LogAbove(self, handler))

    def finished(self, *_) -> bool:
        return bool(self.row) and self.row["state"] in REQUEST_TERMINAL


class _LogAbove(logging.Filter):
    """A filter on a stderr log handler: while the display is on screen the record is
    printed through rich's console, which puts it above the display, and the handler's own
    write is skipped; otherwise the handler writes it as usual."""

    def __init__(self, progress: RunProgress, handler: logging.Handler):
        super().__init__()
        self.progress, self.handler = progress, handler

    def filter(self, record: logging.LogRecord) -> bool:
        live, console = self.progress.live, self.progress.console
        if live is None or console is None:
            return True
        from rich.text import Text

        try:
            # Text: a log line quoting a request name like "[bold]x" prints it as it is
            console.print(Text(self.handler.format(record)), soft_wrap=True)
        except (OSError, ValueError):
            pass
        return False
