"""Optional system metrics of a worker while it runs a ticket: CPU, memory and, where
NVIDIA's management library is installed, GPU use. Turned on by SDGEN_SYSTEM_METRICS=1
(`sdgen daemon --system-metrics` sets it for its workers); logged by the tracker."""

from __future__ import annotations

import os
import time

from sdgen import defaults, settings
from sdgen.worker.background import Background


def enabled() -> bool:
    return settings.get("SDGEN_SYSTEM_METRICS")


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


class SystemSampler(Background):
    """`with SystemSampler(interval) as s: ...` then `s.samples`: [{t, cpu_percent, rss_mb, ...}]."""

    thread_name = "system-metrics"

    def __init__(self, interval: float = defaults.SYSMETRICS_INTERVAL_SECONDS):
        super().__init__()
        self.interval = interval
        self.samples: list[dict] = []

    def run_until_stopped(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        proc, gpu = psutil.Process(), _Gpu()
        proc.cpu_percent(None)
        while True:
            sample = {
                "t": time.time(),
                "cpu_percent": proc.cpu_percent(None),
                "rss_mb": proc.memory_info().rss / 2**20,
                **gpu.sample(),
            }
            if len(self.samples) < defaults.SYSMETRICS_MAX_SAMPLES:
                self.samples.append(sample)
            if self.stopping.wait(self.interval):
                return
