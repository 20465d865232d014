"""Real services that tests and the soak harness start and stop: an MLflow tracking
server on 127.0.0.1. No pytest here, so benchmarks/ can use them too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")



class MlflowServer:
    """A real `mlflow server` (SQLite backend, proxied artifacts) on 127.0.0.1."""

    def __init__(self, root: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root = root
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 120) -> None:
        import urllib.request

        self.log = open(self.root / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")
            try:
                return urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=timeout, interval=0.5, what="mlflow server /health")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
