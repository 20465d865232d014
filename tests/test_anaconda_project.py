"""anaconda-project.yml against the rules anaconda-project applies when it loads a project
(it refuses to run any command of a project with problems, so on ADSP one bad entry stops
every command of the workflow)."""

import re
import shlex
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement

FILE = Path(__file__).resolve().parents[1] / "anaconda-project.yml"
# A conda match spec as anaconda-project reads it: [channel::]name[ version[ build]], or the
# one-word forms name=1.2, name==1.2, name>=1.2,<2, name=1.2=build.
NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
VERSION = r"[0-9A-Za-z_.*+!<>=,|~\-]+"
CONDA_SPEC = re.compile(rf"(?:{NAME}::)?{NAME}(?:(?:\s+{VERSION}(?:\s+[A-Za-z0-9_.*\-]+)?)|(?:[=<>!~]{VERSION}))?")
# Set by the shell, the platform or the command itself, not variables the project must declare.
GIVEN = {"HOME", "PATH", "PWD", "USER", "W", "PROJECT_DIR", "CONDA_PREFIX"}


def _project():
    return yaml.safe_load(FILE.read_text())


def test_every_pip_entry_is_a_requirement():
    pips = [p for entry in _project()["packages"] if isinstance(entry, dict) for p in entry.get("pip", [])]
    assert pips
    for spec in pips:
        try:
            Requirement(spec)
        except InvalidRequirement as e:
            raise AssertionError(f"invalid pip package specifier {spec!r}: {e}") from None


def test_every_conda_entry_is_a_match_spec():
    entries = _project()["packages"]
    assert all(isinstance(e, (str, dict)) for e in entries)
    for spec in (e for e in entries if isinstance(e, str)):
        assert CONDA_SPEC.fullmatch(spec.strip()), f"not a conda match spec: {spec!r}"
    assert [k for e in entries if isinstance(e, dict) for k in e] == ["pip"]


def test_the_checker_refuses_what_anaconda_project_refuses():
    for bad in ("-e .", "./sdgen", "name with spaces and more words here"):
        assert not CONDA_SPEC.fullmatch(bad)
    for bad in ("-e .", "."):
        try:
            Requirement(bad)
        except InvalidRequirement:
            continue
        raise AssertionError(bad)


def test_every_command_runs_on_unix_and_uses_declared_variables():
    project = _project()
    declared = set(project.get("variables") or {})
    assert project["commands"]
    for name, command in project["commands"].items():
        assert isinstance(command.get("unix"), str) and command["unix"].strip(), f"command {name}: no unix:"
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", command["unix"]))
        assert used - declared - GIVEN == set(), f"command {name}: undeclared {used - declared - GIVEN}"
        # sdgen is not installed in the env (no `-e .`): it is run from the project directory
        words = shlex.split(command["unix"])
        assert "sdgen" not in (words[0], *re.findall(r"exec (\S+)", command["unix"])), name
