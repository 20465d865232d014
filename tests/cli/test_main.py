"""The CLI's own parsing: global options after the command, typo hints, a closed pipe."""

import subprocess
import sys

from tests.conftest import sdgen, sdgen_env


def test_data_is_accepted_after_the_command_as_sdgens_hints_write_it(data, tmp_path):
    rid = sdgen(data, "submit", "--prompt", "a", "--engine", "dry-run", check=True).stdout.strip()
    env = sdgen_env(tmp_path / "elsewhere")  # SDGEN_DATA points elsewhere: --data must win
    out = sdgen(data, "status", "--data", str(data), env=env, check=True)
    assert rid in out.stdout
    assert rid in sdgen(data, "--data", str(data), "list", env=env, check=True).stdout
    assert "daemon: not running" in out.stdout and f"sdgen daemon --data {data}" in out.stdout


def test_a_mistyped_command_or_option_gets_the_likely_one(data):
    cmd = sdgen(data, "stauts")
    assert cmd.returncode == 2 and "did you mean 'status'?" in cmd.stderr and cmd.stderr.count("\n") == 1
    opt = sdgen(data, "submit", "--promt", "x")
    assert opt.returncode == 2 and "--promt: did you mean --prompt?" in opt.stderr


def test_a_reader_that_closes_the_pipe_gets_no_error(data):
    for i in range(300):  # `status --json` past a pipe's 64 KiB buffer, so the writer meets EPIPE
        sdgen(data, "submit", "--prompt", f"p{i}", "--name", f"{i:03d}" + "n" * 190, "--engine", "dry-run", check=True)
    assert len(sdgen(data, "status", "--json", check=True).stdout) > 96 * 1024
    proc = subprocess.run(
        f"{sys.executable} -m sdgen status --json | head -c 10",
        shell=True,
        env=sdgen_env(data),
        capture_output=True,
        text=True,
        cwd=data.parent,
    )
    assert "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_data_directory_that_cannot_be_one_is_a_one_line_mistake(data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "below"):
        out = sdgen(data, "--data", str(bad), "submit", "--prompt", "a")
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "check --data" in out.stderr, out.stderr
