"""Optional system metrics of a worker while it runs a ticket: CPU, memory and, where
NVIDIA's management library is installed, GPU use. Turned on by SDGEN_SYSTEM_METRICS=1
(`sdgen daemon --system-metrics` sets it for its workers); logged by the tracker."""

from __future__ import annotations

import os
import threading
import time

MAX_SAMPLES = 600


def enabled() -> bool:
    return os.environ.get("SDGEN_SYSTEM_METRICS", "") in ("1", "on", "true")


class _Gpu:
    def __init__(self):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
            self.handle, self.nvml = pynvml.nvmlDeviceGetHandleByIndex(index), pynvml
        except Exception:  # noqa: BLE001 - no NVIDIA library or no GPU: CPU metrics only
            self.handle = None

    def sample(self) -> dict:
        if self.handle is None:
            return {}
        util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return {"gpu_utilization_percent": float(util.gpu), "gpu_memory_mb": mem.used / 2**20}


class SystemSampler:
    """`with SystemSampler(interval) as s: ...` then `s.samples`: [{t, cpu_percent, rss_mb, ...}]."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)

    def __enter__(self) -> "SystemSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        proc, gpu = psutil.Process(), _Gpu()
        proc.cpu_percent(None)
        while True:
            sample = {"t": time.time(), "cpu_percent": proc.cpu_percent(None),
                      "rss_mb": proc.memory_info().rss / 2**20, **gpu.sample()}
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(sample)
            if self._stop.wait(self.interval):
                return
