"""`sdgen ui`: the MLflow UI on the embedded store (or on MLFLOW_TRACKING_URI's server)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import webbrowser

from sdgen.config import data_root
from sdgen.exceptions import UserError


def cmd_ui(args: argparse.Namespace) -> int:
    if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        url = os.environ["MLFLOW_TRACKING_URI"]
        print(f"runs are on a tracking server: open {url}")
        webbrowser.open(url)
        return 0
    root = data_root(args.data)
    store = root / "mlflow" / "mlflow.db"
    if not store.exists():
        raise UserError(f"no MLflow store in {root / 'mlflow'} yet: run a request first (`sdgen run --prompt ...`)")
    _check_port(args.host, args.port)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        f"sqlite:///{store}",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    # A child, not exec: its exit code is ours to check (mlflow ui exits 0 after its server
    # fails to bind, e.g. when another process took the port after our check).
    # Its own session: a SIGTERM/SIGHUP sent to us is passed on to the whole server (mlflow ui
    # starts uvicorn workers of its own), which would otherwise outlive us.
    proc = subprocess.Popen(cmd, start_new_session=True)

    def pass_on(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, pass_on)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # in its own session the child did not get the Ctrl-C: pass it on
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait()
        return 0
    if code in (-signal.SIGTERM, -signal.SIGINT) or code in (128 + signal.SIGTERM, 130):
        return 0  # stopped by the user (through us)
    if code:
        raise UserError(
            f"the MLflow UI exited with code {code} (its own messages are above): "
            f"if the port was taken, choose another with --port"
        )
    return 0


def _check_port(host: str, port: int) -> None:
    """One line naming --port instead of mlflow's 'Address already in use' and exit 0."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(
            f"--host {host!r} is not an address of this machine ({e.strerror}): "
            f"use e.g. --host 127.0.0.1 or --host 0.0.0.0"
        ) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as a server binds (SO_REUSEADDR): a port left in TIME_WAIT is free for it too
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(
                f"port {port} on {host} is not free ({e.strerror}): pick another "
                f"with --port, e.g. `sdgen ui --port {port + 1}`"
            ) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use a number from 1 to 65535")
    return int(text)


def register(sub) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI on this data directory's runs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=5000, help="port of the UI (default 5000)")
    p.set_defaults(func=cmd_ui)
