"""Images per second and time left, from successive samples of a request's images_done. Pure.

Workers publish grouped tickets: 16 images may land in one instant, then nothing for
seconds, and two workers' groups may land a few milliseconds apart. Dividing images by the
time since the first image then reads hundreds of images per second. So the rate is
measured between *landings* (samples where images_done grew), over a window of recent
landings, and only once they span a few seconds; between landings it holds, and it decays
only once the wait since the last landing is longer than the usual gap between landings
(a stall, not the quiet before the next group).
"""

from __future__ import annotations

from sdgen import defaults


class RateMeter:
    """Feed `sample(now, done)` with a monotonic clock; read `rate(now)` and `eta(now, total)`."""

    def __init__(
        self,
        window: float = defaults.RATE_WINDOW_SECONDS,
        min_span: float = defaults.RATE_MIN_SPAN_SECONDS,
    ):
        self.window, self.min_span = window, min_span
        self.last_done: int | None = None
        # (time, images_done) at each sample where images_done grew. The first landing is the
        # anchor: the images in it took an unknown time (model build, first compile) and are
        # not counted, only the ones after it.
        self.landings: list[tuple[float, int]] = []

    def sample(self, now: float, done: int) -> None:
        if self.last_done is not None and done < self.last_done:
            self.landings.clear()  # counts went back (tickets retried): start over
        elif self.last_done is not None and done > self.last_done:
            self.landings.append((now, done))
        self.last_done = done
        # Forget landings older than the window, but keep two: a request slower than one
        # landing per window still has a rate.
        while len(self.landings) > 2 and self.landings[1][0] < now - self.window:
            self.landings.pop(0)

    def rate(self, now: float) -> float | None:
        """Images per second, or None while there is too little to say."""
        if len(self.landings) < 2:
            return None
        (t0, d0), (t1, d1) = self.landings[0], self.landings[-1]
        gap = (t1 - t0) / (len(self.landings) - 1)  # the usual wait between landings
        end = max(t1, now - gap)  # past the usual gap: a stall, and the rate falls with it
        if end - t0 < self.min_span:
            return None  # groups landing a moment apart: no rate to speak of yet
        return (d1 - d0) / (end - t0)

    def eta(self, now: float, total: int) -> float | None:
        """Seconds until `total` images are done at the current rate, or None."""
        rate = self.rate(now)
        if not rate or self.last_done is None:
            return None
        return max(0, total - self.last_done) / rate


def rate_text(rate: float | None) -> str:
    return f"{rate:.2f} img/s" if rate is not None else ""


def eta_text(eta: float | None) -> str:
    if eta is None:
        return ""
    seconds = int(round(eta))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
