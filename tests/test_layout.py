"""README's "Layout of the code" names every module under sdgen/, so it stays true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout of the code")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_layout_names_every_module():
    named = set(re.findall(r"^(sdgen/\S+\.py)\s", layout_section(), re.M))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "sdgen").rglob("*.py")}
    assert not modules - named, f"modules missing from README's layout: {sorted(modules - named)}"


def test_readme_follows_one_request_through_the_modules():
    text = (ROOT / "README.md").read_text()
    flow = text[text.index("## How one request flows") : text.index("## Layout of the code")]
    for module in (
        "cli/submit.py",
        "daemon/scheduler.py",
        "spool/split.py",
        "spool/store.py",
        "spool/claim.py",
        "worker/runner.py",
        "engine/base.py",
        "pngmeta.py",
        "tracking/mlflow_log.py",
        "spool/progress.py",
        "cli/status.py",
    ):
        assert f"`{module}`" in flow, module
