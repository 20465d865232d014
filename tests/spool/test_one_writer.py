"""One writer: every create, rename, rewrite and unlink under spool/ goes through a `Spool`
method named for its protocol step (sdgen/spool/store.py; docs/spool.md, "Protocol steps").

This greps sdgen/ for the write primitives applied to spool paths outside the modules
allowed to hold them, so a new direct write to the spool fails here instead of becoming
the next lost ticket. Writes under data/cache, outputs/, logs/ and worker_env/ are not spool
writes and are not looked at.
"""

from __future__ import annotations

import re
from pathlib import Path

SDGEN = Path(__file__).resolve().parents[2] / "sdgen"

# The spool's own writers: Spool itself, the atomic-publish primitives it uses, the readers'
# module (it writes nothing) and the file helpers publish.py re-exports.
ALLOWED = {"spool/store.py", "spool/publish.py", "spool/records.py", "fsutil.py"}

# A call that creates, renames, rewrites or unlinks a file.
PRIMITIVE = re.compile(
    r"os\.(rename|replace|link|unlink|remove|rmdir)\(|\.unlink\(|\.rename\(|\.replace\(\s*[\w.]|"
    r"(?<![\w.])(publish|link_new|atomic_write|write_tmp)\(|spool\.write\(|\.write_bytes\(|\.write_text\(|"
    r"\.mkdir\(|shutil\.(rmtree|move)\(|open\([^)]*['\"][wax]b?\+?['\"]"
)

# Something that names a place under spool/: Layout's spool paths (not logs/, outputs/,
# cache/, mlflow/ or the root), a literal "spool" folder, or a jobs file.
SPOOL_REF = re.compile(
    r"layout\.(?!(logs|outputs|output_dir|root|mlflow_dir)\b)\w+|[\"']spool[\"']|spool/|\bstate_file\b"
)

# `x = <spool path>` (or `for x in <a spool folder's listing>`) makes x a spool path for the
# rest of the file.
ASSIGN = re.compile(r"^\s*(?:for\s+)?(\w+)\s*(?:=|\bin\b)\s*(.+)$")


def spool_writes(root: Path, allowed: set[str] = ALLOWED) -> list[str]:
    """`path:line: text` for every write primitive applied to a spool path under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        tainted: set[str] = set()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            m = ASSIGN.match(code)
            if m and SPOOL_REF.search(m.group(2)):
                tainted.add(m.group(1))
            if not PRIMITIVE.search(code):
                continue
            if (
                SPOOL_REF.search(code)
                or "spool.write(" in code
                or any(re.search(rf"\b{re.escape(name)}\b", code) for name in tainted)
            ):
                found.append(f"{rel}:{number}: {line.strip()}")
    return found


def test_nothing_outside_spool_writes_the_spool():
    found = spool_writes(SDGEN)
    assert found == [], (
        "write to spool/ outside Spool (add a Spool method named for the protocol "
        "step, and a row in docs/spool.md's Protocol steps):\n" + "\n".join(found)
    )


def test_the_check_sees_the_writes_it_is_for(tmp_path):
    """The kinds of direct writes this rule replaced are all caught."""
    bad = [
        "layout.lease(name).unlink(missing_ok=True)",
        'os.rename(layout.ticket("pending", name), layout.ticket("running", name))',
        "self.spool.write(self.spool.layout.launcher_status, data)",
        'publish(state_file.parent / "tmp", state_file, data)',
        "os.unlink(spool.layout.events / name)",
        "spool.layout.request_dir(request_id).mkdir(parents=True, exist_ok=True)",
        "path = self.spool.layout.events / name\npath.unlink(missing_ok=True)",
        'won = link_new(self.spool.layout.tmp, self.spool.layout.ticket("done", name), data)',
        'open(root / "spool" / "x.json", "w")',
        "for entry in os.scandir(spool.layout.tmp):\n    os.unlink(entry.path)",
    ]
    for i, text in enumerate(bad):
        (tmp_path / f"m{i}.py").write_text(text + "\n")
    assert len(spool_writes(tmp_path)) == len(bad)


def test_writes_elsewhere_are_not_spool_writes(tmp_path):
    ok = [
        'logs = self.data_root / "logs"\nlogs.mkdir(parents=True, exist_ok=True)',
        "self.spool.layout.output_dir(request_id).mkdir(parents=True, exist_ok=True)",
        "self.spool.renew_lease(self.name, data)",
        'marker = json.loads(self.spool.layout.ticket("done", name).read_text())',
    ]
    for i, text in enumerate(ok):
        (tmp_path / f"m{i}.py").write_text(text + "\n")
    assert spool_writes(tmp_path) == []
