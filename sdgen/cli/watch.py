"""`sdgen status --watch`: the status table kept up to date until Ctrl-C.

On a terminal a rich live table (state, progress bar, images, rate, ETA per request; the
daemon, workers, launcher and MLflow lines under it) redrawn in place. Anywhere else (a pipe,
a log file) plain lines: one per request whose state or image count changed, and the lines
under the table when they change; never a carriage return or an escape code.

Everything a user wrote (names, reasons) reaches rich as Text, never as markup: a request
named "[bold]x" shows those characters.
"""

from __future__ import annotations

import sys
import time

from sdgen.cli.progress import bar_width, is_terminal
from sdgen.cli.rate import RateMeter, eta_text, rate_text
from sdgen.cli.status import collect, daemon_state, footer_lines
from sdgen.spool.states import RequestState
from sdgen.spool.store import Spool
from sdgen.textsafe import printable

# States whose rows stay in the live table however long it gets; finished ones are dropped
# oldest first when the table would not fit the terminal (a redraw taller than the screen
# scrolls, and then cannot be redrawn in place).
_ACTIVE = {RequestState.PENDING, RequestState.RUNNING, "paused"}


class Watcher:
    """One look at the spool after another: rows, the lines under the table, and a rate
    per request from the successive image counts."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self.meters: dict[str, RateMeter] = {}
        self.printed: dict[str, tuple] = {}  # plain lines: what each row / footer line said last

    def look(self, now: float) -> tuple[list[dict], list[str]]:
        rows = collect(self.spool)
        footer = footer_lines(self.spool, rows, daemon_state(self.spool))
        for row in rows:
            meter = self.meters.setdefault(row["id"], RateMeter())
            meter.sample(now, row["images_done"])
            running = row["state"] == RequestState.RUNNING
            row["rate"] = meter.rate(now) if running else None
            row["eta"] = meter.eta(now, row["images_total"]) if running else None
        return rows, footer

    def changed_lines(self, rows: list[dict], footer: list[str]) -> list[str]:
        """Plain mode: a line for each row whose state or counts changed since the last
        look, then each line under the table that is new. The rate alone changing is no
        change (it moves at every look)."""
        out = []
        for row in rows:
            key = (row["state"], row["images_done"], row["images_total"], row.get("reason"))
            if self.printed.get(row["id"]) != key:
                self.printed[row["id"]] = key
                out.append(plain_row(row))
        shown = tuple(footer)
        if self.printed.get("") != shown:
            new = [line for line in footer if line not in self.printed.get("", ())]
            self.printed[""] = shown
            out += new
        return out


def plain_row(row: dict) -> str:
    """`ID STATE 3/12 images 4.00 img/s ETA 2s NAME [reason: ...]`, user text inert."""
    parts = [printable(row["id"]), str(row["state"]), f"{row['images_done']}/{row['images_total']} images"]
    if row.get("rate") is not None:
        parts.append(rate_text(row["rate"]))
    if row.get("eta") is not None:
        parts.append(f"ETA {eta_text(row['eta'])}")
    if row.get("name"):
        parts.append(printable(row["name"]))
    if row.get("reason") and row["state"] not in _ACTIVE:
        parts.append(f"reason: {printable(row['reason'])}")
    return " ".join(parts)


def table(rows: list[dict], footer: list[str], width: int, height: int):
    """The live view: a table of requests and the footer lines, as rich renderables."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    # Finished rows go first when the screen is short: header, footer and a line to say so.
    room = max(1, height - len(footer) - 4)
    hidden = 0
    if len(rows) > room:
        finished = [i for i, r in enumerate(rows) if r["state"] not in _ACTIVE]
        drop = set(finished[: len(rows) - room])
        hidden = len(drop)
        rows = [r for i, r in enumerate(rows) if i not in drop][-room:]
    t = Table(box=None, padding=(0, 1), header_style="bold", expand=False)
    t.add_column("ID", no_wrap=True)
    t.add_column("STATE", no_wrap=True)
    t.add_column("PROGRESS", width=bar_width(width), no_wrap=True)
    t.add_column("IMAGES", justify="right", no_wrap=True)
    t.add_column("RATE", justify="right", no_wrap=True)
    t.add_column("ETA", justify="right", no_wrap=True)
    t.add_column("NAME", no_wrap=True, overflow="ellipsis")
    for r in rows:
        total = r["images_total"]
        name = Text(printable(r.get("name") or ""))
        if r.get("reason") and r["state"] not in _ACTIVE:
            name.append(f" {printable(r['reason'])}", style="dim")
        t.add_row(
            Text(printable(r["id"])),
            Text(str(r["state"]), style=_STATE_STYLE.get(str(r["state"]), "")),
            ProgressBar(total=max(total, 1), completed=r["images_done"] if total else 0, width=bar_width(width)),
            Text(f"{r['images_done']}/{total}"),
            Text(rate_text(r.get("rate"))),
            Text(eta_text(r.get("eta"))),
            name,
        )
    parts = [t] if rows else [Text("no requests yet: `sdgen submit --prompt ...` queues one")]
    if hidden:
        parts.append(Text(f"({hidden} finished request(s) not shown: `sdgen status` lists them all)", style="dim"))
    parts += [Text(line, no_wrap=True, overflow="ellipsis") for line in footer]
    return Group(*parts)


_STATE_STYLE = {
    "running": "cyan",
    "done": "green",
    "failed": "red",
    "rejected": "red",
    "corrupt": "red",
    "stuck": "yellow",
    "paused": "yellow",
    "cancelled": "dim",
}


def watch(spool: Spool, interval: float, stream=None, console=None, sleep=None, clock=None) -> int:
    """Look every `interval` seconds until Ctrl-C, which ends it quietly (exit 0). `console`
    (a rich Console) forces the live table, as tests do; else it is drawn when `stream`
    (stdout) is a terminal."""
    stream = stream if stream is not None else sys.stdout
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    watcher = Watcher(spool)
    live = None
    try:
        if console is None and is_terminal(stream):
            from rich.console import Console

            console = Console(file=stream, highlight=False)
        if console is not None:
            from rich.live import Live

            # redrawn by us at each look, not by a thread of rich's: nothing changes between
            live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
            live.start()
        while True:
            rows, footer = watcher.look(clock())
            if live is not None:
                live.update(table(rows, footer, console.width, console.height), refresh=True)
            else:
                lines = watcher.changed_lines(rows, footer)
                if lines:
                    stamp = time.strftime("%H:%M:%S")
                    stream.write("".join(f"{stamp} {line}\n" for line in lines))
                    stream.flush()
            sleep(interval)
    except KeyboardInterrupt:
        return 0  # the way to end it: no traceback, no message
    finally:
        if live is not None:
            live.stop()
