"""`make run`: the prompt reaches sdgen as typed, and offline it ends with the missing weight
files and the two offline alternatives."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")


def _fake_venv(tmp_path, sdgen_script: str) -> Path:
    """A VENV whose sdgen is `sdgen_script`, with the install stamp up to date."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    fake = venv / "bin" / "sdgen"
    fake.write_text("#!/bin/sh\n" + sdgen_script)
    fake.chmod(0o755)
    stamp = venv / ".installed-ml"
    stamp.touch()
    later = time.time() + 60
    os.utime(stamp, (later, later))
    return venv


def test_the_prompt_keeps_dollar_signs_and_quotes(tmp_path):
    venv = _fake_venv(tmp_path, 'for a in "$@"; do printf "%s\\n" "$a"; done\n')
    prompt = """a fox costs $5 and it's "cheap" `x`"""
    out = subprocess.run(
        ["make", "-s", "run", f"VENV={venv}", f"PROMPT={prompt}", "ARGS=--engine dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["run", "--prompt"] and out.stdout.splitlines()[2] == prompt


def test_offline_make_run_names_the_missing_files_and_the_offline_ways(tmp_path):
    venv = _fake_venv(
        tmp_path,
        'if [ "$2" = status ]; then echo "missing: $HOME/.keras/x.h5 (1 GB)"; exit 1; fi\n'
        'if [ "$2" = fetch ]; then echo "download failed: no network" >&2; exit 1; fi\n'
        "exit 0\n",
    )
    out = subprocess.run(["make", "-s", "run", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "missing: " in out.stdout and "x.h5" in out.stdout
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("make run:")]  # make adds its own "Error 2"
    assert "--weights random" in line and "--engine dry-run" in line and "sd-v1" in line


def test_make_run_dry_run_end_to_end_keeps_the_prompt(tmp_path):
    data = tmp_path / "data"
    env = dict(os.environ, SDGEN_DATA=str(data), SDGEN_TRACKING="off")
    out = subprocess.run(
        [
            "make",
            "-s",
            "run",
            "PROMPT=a fox costs $5",
            "IMAGES=1",
            "ARGS=--engine dry-run --weights random --width 128 --height 128",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (request,) = (data / "spool" / "requests").glob("*/request.yaml")
    assert "prompt: a fox costs $5" in request.read_text()
