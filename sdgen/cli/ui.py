"""`sdgen ui`: the MLflow UI on the embedded store (or on MLFLOW_TRACKING_URI's server)."""

from __future__ import annotations

import argparse
import os
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
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}",
           "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(sys.executable, cmd)


def register(sub) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI on this data directory's runs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
