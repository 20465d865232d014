"""The engines' environment knobs: defaults, and one-line errors for bad values."""

import pytest

from sdgen.engine import settings
from sdgen.engine.batching import chunk_for
from sdgen.exceptions import EngineError


def test_precision_defaults_by_device_and_refuses_unknown_values(monkeypatch):
    monkeypatch.delenv("SDGEN_PRECISION", raising=False)
    assert (settings.precision(gpu=True), settings.precision(gpu=False)) == ("bfloat16", "float32")
    monkeypatch.setenv("SDGEN_PRECISION", "fp8")
    with pytest.raises(EngineError, match="must be one of float32, float16, bfloat16"):
        settings.precision(gpu=True)


def test_group_images_reads_the_setting_and_explains_a_bad_one(monkeypatch):
    monkeypatch.delenv("SDGEN_GROUP_IMAGES", raising=False)
    assert settings.group_images(16) == 16
    monkeypatch.setenv("SDGEN_GROUP_IMAGES", "0")
    assert settings.group_images(16) == 1  # at least one image: grouping off
    monkeypatch.setenv("SDGEN_GROUP_IMAGES", "lots")
    with pytest.raises(EngineError, match="SDGEN_GROUP_IMAGES must be a whole number from 0 to 1024, got 'lots'"):
        settings.group_images(16)


def test_attention_refuses_unknown_values(monkeypatch):
    monkeypatch.setenv("SDGEN_ATTENTION", "flash")
    with pytest.raises(EngineError, match="fused or stock"):
        settings.attention()


def test_a_chunk_is_the_ticket_cut_to_memory_and_the_max_batch(monkeypatch):
    monkeypatch.delenv("SDGEN_MAX_BATCH", raising=False)
    assert chunk_for(64, 1024, 1024, 24.0, "bfloat16") == 8  # 2 + 8 x 1.5 GiB fits 90% of 24
    assert chunk_for(3, 512, 512, 80.0, "bfloat16") == 3
    monkeypatch.setenv("SDGEN_MAX_BATCH", "4")
    assert chunk_for(64, 512, 512, None, "float32") == 4
