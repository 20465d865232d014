"""The smoothed rate of `sdgen run` and `sdgen status --watch` (sdgen/cli/rate.py)."""

import pytest

from sdgen.cli.rate import RateMeter, eta_text, rate_text


def _feed(meter: RateMeter, images_at, until: float, every: float = 0.5):
    """Sample `images_at(t)` every `every` seconds up to `until`: [(t, rate)]."""
    out, t = [], 0.0
    while t <= until + 1e-9:
        meter.sample(t, images_at(t))
        out.append((t, meter.rate(t)))
        t = round(t + every, 6)
    return out


def test_sixteen_images_landing_at_once_every_4s_read_4_per_second_not_300():
    """Grouped tickets: 16 images land in one instant, then nothing for 4 s."""
    meter = RateMeter(window=30, min_span=3)
    rates = _feed(meter, lambda t: 16 * int(t // 4), until=120)
    shown = [r for t, r in rates if r is not None]
    assert shown and all(3.5 <= r <= 4.5 for r in shown), max(shown)
    assert all(r is not None for t, r in rates if t >= 8)  # from the second landing on
    assert meter.eta(120, 16 * 40) == pytest.approx((640 - 480) / 4, rel=0.15)


def test_two_workers_groups_landing_a_moment_apart_do_not_read_hundreds():
    """The bug of issue 20: two workers' groups of 16 land 50 ms apart (8 img/s in all);
    the time since the first image then read 270-335 images/s."""
    meter = RateMeter(window=60, min_span=3)

    def images(t):
        return 16 * int(t // 4) + 16 * int(max(0.0, t - 0.05) // 4)

    rates = _feed(meter, images, until=120, every=0.05)
    shown = [r for t, r in rates if r is not None]
    assert shown and max(shown) < 16, max(shown)  # within 2x early on
    late = [r for t, r in rates if t > 60 and r is not None]
    assert late and all(6.5 <= r <= 10 for r in late), (min(late), max(late))


def test_a_steady_stream_reads_its_rate():
    meter = RateMeter(window=30, min_span=3)
    rates = _feed(meter, lambda t: int(t / 0.5), until=40)
    assert all(r == pytest.approx(2, rel=0.05) for t, r in rates if t >= 4)


def test_no_rate_before_two_landings_or_a_short_span():
    meter = RateMeter(window=30, min_span=3)
    assert meter.rate(0) is None and meter.eta(0, 10) is None
    meter.sample(0, 0)
    meter.sample(1, 4)  # the first images (after the model build): the anchor
    assert meter.rate(1) is None
    meter.sample(1.2, 8)  # a second group a moment later: too short to say
    assert meter.rate(1.2) is None
    meter.sample(5, 12)
    assert meter.rate(5) == pytest.approx(8 / 4)


def test_a_stall_brings_the_rate_down_and_the_eta_up():
    meter = RateMeter(window=30, min_span=3)
    _feed(meter, lambda t: 16 * int(t // 4), until=40)
    steady, eta = meter.rate(40), meter.eta(40, 1000)
    assert steady == pytest.approx(4)
    assert meter.rate(43.9) == pytest.approx(4)  # the quiet before the next group is no stall
    for t in (50, 80, 200):
        meter.sample(t, 160)  # no more images
    assert meter.rate(200) < 1 and meter.eta(200, 1000) > 4 * eta


def test_old_landings_leave_the_window_and_the_rate_follows_a_new_pace():
    meter = RateMeter(window=20, min_span=3)
    _feed(meter, lambda t: int(t) if t < 60 else 60 + 4 * int(t - 60), until=120)
    assert meter.rate(120) == pytest.approx(4, rel=0.1)


def test_counts_going_back_start_over():
    meter = RateMeter(window=30, min_span=3)
    _feed(meter, lambda t: 4 * int(t), until=10)
    meter.sample(11, 2)
    assert meter.rate(11) is None


def test_texts():
    assert rate_text(None) == "" and rate_text(4) == "4.00 img/s"
    assert eta_text(None) == "" and eta_text(12.4) == "12s" and eta_text(125) == "2m05s"
    assert eta_text(3 * 3600 + 120) == "3h02m"
