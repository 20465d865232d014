"""sdgen/settings.py: every SDGEN_*/ADSP_* variable parses to a value or to one short line
naming it; the daemon refuses to start on a bad one, a worker fails its ticket with it,
and no command ends in a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from sdgen import settings
from sdgen.exceptions import EngineError, SettingError, UserError
from sdgen.spool.request import parse_request
from tests.conftest import REPO, sdgen, sdgen_env

RID = "20261126-000000-aaaaaa"
DRY = "prompt: a fox\nimages: 2\nseed: 10\nengine: dry-run\nweights: random\nwidth: 128\nheight: 128\n"


def one_line_error(e: SettingError, name: str) -> None:
    text = str(e)
    assert "\n" not in text and "\r" not in text and len(text.splitlines()) == 1, text
    assert len(text) < 300 and text.startswith(f"{name} must be "), text


@given(name=st.sampled_from(sorted(settings.SETTINGS)), text=st.text())
@hyp_settings(max_examples=500)
def test_any_text_is_a_value_or_one_line_naming_the_variable(name, text):
    try:
        settings.SETTINGS[name].value(text)
    except SettingError as e:
        one_line_error(e, name)


@given(name=st.sampled_from(sorted(settings.SETTINGS)), text=st.text(min_size=1))
def test_check_agrees_with_the_setting_and_never_raises_anything_else(name, text):
    try:
        settings.SETTINGS[name].value(text)
        good = True
    except SettingError:
        good = False
    if good:
        settings.check({name: text})
    else:
        with pytest.raises(SettingError, match=f"^{name} must be "):
            settings.check({name: text})


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("SDGEN_MAX_BATCH", " 8 ", 8),
        ("SDGEN_MAX_BATCH", "", 64),
        ("SDGEN_TRACKING", "OFF", False),
        ("SDGEN_TRACKING", "1", True),
        ("SDGEN_PRECISION", None, None),
        ("SDGEN_COMPILE_CACHE", "off", None),
        ("SDGEN_COMPILE_CACHE", "/tmp/jax", "/tmp/jax"),
        ("SDGEN_DRY_RUN_DELAY", "0.25", 0.25),
        ("SDGEN_GROUP_IMAGES", "0", 0),
        ("SDGEN_WORKER_ID", "node-1.local1-42", "node-1.local1-42"),
        ("ADSP_WORKER_MAX", "3", 3),
        ("SDGEN_IDLE_EXIT", None, 30.0),
    ],
)
def test_good_values_and_defaults(name, text, value):
    assert settings.get(name, {} if text is None else {name: text}) == value


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("SDGEN_MAX_BATCH", "abc", "SDGEN_MAX_BATCH must be a whole number from 1 to 64, got 'abc'"),
        ("SDGEN_MAX_BATCH", "65", "from 1 to 64, got '65'"),
        ("SDGEN_DRY_RUN_DELAY", "nan", "a number of seconds from 0 to 86400, got 'nan'"),
        ("SDGEN_IDLE_EXIT", "0", "above 0, got '0'"),
        ("SDGEN_TRACKING", "maybe", "on or off"),
        ("SDGEN_WORKER_ID", "a/b", "got 'a/b'"),
        ("SDGEN_PRECISION", "fp8", "one of float32, float16"),
    ],
)
def test_bad_values_say_what_is_allowed(name, text, expected):
    with pytest.raises(SettingError) as e:
        settings.get(name, {name: text})
    assert expected in str(e.value)
    one_line_error(e.value, name)


def test_a_long_bad_value_is_cut_and_the_others_are_named():
    with pytest.raises(SettingError) as e:
        settings.check({"SDGEN_MAX_BATCH": "x" * 10_000, "SDGEN_TRACKING": "?", "SDGEN_SAMPLER": "?"})
    text = str(e.value)
    assert (
        text.startswith("SDGEN_SAMPLER must be fused or stock") and "also bad: SDGEN_MAX_BATCH, SDGEN_TRACKING" in text
    )
    assert len(text) < 300


def test_a_setting_error_is_a_user_error_and_a_final_engine_error():
    e = SettingError("SDGEN_X must be y, got 'z'")
    assert isinstance(e, UserError) and isinstance(e, EngineError) and e.transient is False


def test_no_module_reads_an_sdgen_variable_but_settings():
    pattern = re.compile(r"environ(\.get\(|\[)\s*[\"'](SDGEN_|ADSP_)")
    readers = [str(p.relative_to(REPO)) for p in (REPO / "sdgen").rglob("*.py") if pattern.search(p.read_text())]
    assert readers == []


def test_the_readme_table_is_the_modules():
    assert settings.table() in (REPO / "README.md").read_text()


# -- real processes ---------------------------------------------------------------------------


def assert_one_line(proc, *expected: str, code: int = 2) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in lines[0], proc.stderr


@pytest.mark.parametrize(
    "name",
    [
        "SDGEN_IDLE_EXIT",
        "SDGEN_HEARTBEAT",
        "SDGEN_MAX_BATCH",
        "SDGEN_TRACKING",
        "SDGEN_DRY_RUN_DELAY",
        "ADSP_WORKER_MAX",
        "SDGEN_WORKER_ID",
    ],
)
def test_reading_commands_work_with_any_bad_setting(data, name):
    sdgen(data, "submit", "--prompt", "a", "--engine", "dry-run", check=True)
    env = sdgen_env(data, **{name: "abc/"})
    for args in (["status"], ["list"], ["status", "--json"], ["submit", "--prompt", "b", "--engine", "dry-run"]):
        proc = sdgen(data, *args, env=env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)


@pytest.mark.parametrize(
    "command", [["daemon", "--exit-when-idle"], ["run", "--prompt", "a", "--engine", "dry-run", "--images", "1"]]
)
def test_the_daemon_refuses_to_start_on_a_bad_setting(data, command):
    proc = sdgen(data, *command, env=sdgen_env(data, SDGEN_MAX_BATCH="abc"))
    assert_one_line(proc, "SDGEN_MAX_BATCH must be a whole number from 1 to 64, got 'abc'")
    assert not (data / "spool" / "inbox").exists() or not list((data / "spool" / "inbox").iterdir())


def test_a_worker_with_a_bad_setting_fails_its_ticket_with_the_reason(data, spool):
    spool.accept(RID, parse_request(DRY), source="t", now=0.0)
    proc = sdgen(data, "worker", "--idle-exit", "1", env=sdgen_env(data, SDGEN_DRY_RUN_DELAY="abc"))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        spool.ticket_names("running") == [] and len(spool.ticket_names("pending")) == 1
    )  # one failed, then it stopped
    [name] = spool.ticket_names("failed")
    reason = spool.read_ticket("failed", name).reason
    assert "SDGEN_DRY_RUN_DELAY must be a number of seconds from 0 to 86400, got 'abc'" in reason


def test_a_worker_with_a_bad_own_setting_exits_with_one_line(data, spool):
    spool.accept(RID, parse_request(DRY), source="t", now=0.0)
    proc = sdgen(data, "worker", env=sdgen_env(data, SDGEN_IDLE_EXIT="soon"))
    assert_one_line(proc, "SDGEN_IDLE_EXIT must be a number of seconds above 0, got 'soon'")
    assert len(spool.ticket_names("pending")) == 2  # nothing claimed


# -- a data directory without a spool ---------------------------------------------------------


def test_worker_status_and_list_refuse_a_folder_without_a_spool(tmp_path):
    typo = tmp_path / "dta"
    for args in (["worker", "--idle-exit", "1"], ["status"], ["list"]):
        proc = sdgen(typo, *args)
        assert_one_line(proc, f"no spool in {typo}", "--data or SDGEN_DATA")
    assert not typo.exists()  # nothing made in the mistyped folder


def test_submit_makes_the_spool_and_says_when_no_daemon_runs(data, daemon):
    proc = sdgen(data, "submit", "--prompt", "a", "--engine", "dry-run", check=True)
    assert proc.stdout.strip() and f"no daemon runs on {data}" in proc.stderr
    d = daemon("--workers", "1")
    from tests.conftest import wait_for

    wait_for(lambda: (data / "spool" / "daemon.json").exists(), what="the daemon's lock")
    proc = sdgen(data, "submit", "--prompt", "b", "--engine", "dry-run", check=True)
    assert "no daemon" not in proc.stderr, proc.stderr
    d.close()


def test_data_root_is_resolved_through_symlinks(tmp_path, monkeypatch):
    from sdgen.config import data_root

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    assert data_root("link") == data_root(str(real)) == real.resolve()
    monkeypatch.setenv("SDGEN_DATA", "link/../link")
    assert data_root() == real.resolve()


def test_a_data_dir_in_a_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    proc = sdgen(tmp_path / "data", "--data", str(loop / "x"), "status")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert Path(tmp_path).exists()
