"""One writer: every create, rename, rewrite and unlink under spool/ goes through a `Spool`
method named for its protocol step (sdgen/spool/store.py; docs/spool.md, "Protocol steps").

This reads every module of sdgen/ (outside the few allowed to write the spool) with `ast`
and flags each call of a write primitive whose target is a spool path, so that a new direct
write to the spool fails here instead of becoming the next lost ticket. Writes under
data/cache, outputs/, logs/ and worker_env/ are not spool writes and are not looked at.

What counts as a spool path, in one function (or at module level):
  - a `Layout` path under spool/, reached from a layout (`layout.ticket(...)`,
    `self.spool.layout.tmp`, `Layout(root).jobs_file(...)`); which of Layout's paths are
    under spool/ is asked of Layout itself, so a new one is covered at once;
  - a literal "spool" folder (`root / "spool" / ...`);
  - a name assigned from, or looping over, a spool path (`path = layout.lease(name)`,
    `for entry in os.scandir(layout.tmp)`), and a `self.<attribute>` assigned one anywhere
    in the module (a launcher's `self.state_file`).
A spool path handed to a function of the module as an argument is not followed: the rule is
about direct writes, and the functions that write on behalf of others are Spool's.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from sdgen.spool.layout import Layout

SDGEN = Path(__file__).resolve().parents[2] / "sdgen"

# The spool's own writers: Spool itself, the atomic-publish primitives it uses, the readers'
# module (it writes nothing) and the file helpers publish.py re-exports.
ALLOWED = {"spool/store.py", "spool/publish.py", "spool/records.py", "fsutil.py"}

# Write primitives, by how they are called.
OS_WRITES = {"rename", "replace", "link", "symlink", "unlink", "remove", "rmdir", "mkdir", "makedirs", "truncate"}
SHUTIL_WRITES = {"rmtree", "move", "copy", "copy2", "copyfile", "copytree"}
PATH_WRITES = {
    *("unlink", "rename", "replace", "write_text", "write_bytes", "mkdir", "touch", "rmdir"),
    *("symlink_to", "hardlink_to"),
}
# sdgen/fsutil.py's atomic-file helpers and spool/publish.py's names for them.
HELPER_WRITES = {"atomic_write", "write_tmp", "publish", "link_new"}
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}
# A name that holds a spool path by convention, in whichever module: a launcher's jobs file.
SPOOL_NAMES = {"state_file"}


def _layout_paths_under_spool() -> set[str]:
    """The names of Layout's properties and methods that give a path under spool/, found by
    asking a Layout (methods get placeholder arguments)."""
    layout = Layout(Path("/data"))
    names = set()
    for name in dir(Layout):
        if name.startswith("_"):
            continue
        value = getattr(layout, name)
        if inspect.ismethod(value):
            value = value(*("pending" if p == "state" else "x" for p in inspect.signature(value).parameters))
        if isinstance(value, Path) and value.is_relative_to(layout.spool):
            names.add(name)
    return names


SPOOL_PATHS = _layout_paths_under_spool()


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def is_layout(node: ast.AST) -> bool:
    """`layout`, `x.layout` or `Layout(...)`."""
    if isinstance(node, ast.Call):
        return (dotted(node.func) or "").split(".")[-1] == "Layout"
    return (dotted(node) or "").split(".")[-1] == "layout"


def mentions_spool(node: ast.AST | None, tainted: set[str]) -> bool:
    if node is None:
        return False
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            if sub.value == "spool" or "spool/" in sub.value:
                return True
        elif isinstance(sub, ast.Attribute) and sub.attr in SPOOL_PATHS and is_layout(sub.value):
            return True
        if isinstance(sub, (ast.Name, ast.Attribute)) and (dotted(sub) in tainted):
            return True
    return False


def write_targets(call: ast.Call) -> list[ast.AST]:
    """The expressions a call writes to, if it is a write primitive; [] if it is not one."""
    func, args = call.func, list(call.args)
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    owner = dotted(func.value) if isinstance(func, ast.Attribute) else None
    mode = next((k.value for k in call.keywords if k.arg in ("mode", "flags")), None)
    if name in HELPER_WRITES:
        return args
    if (owner == "os" and name in OS_WRITES) or (owner == "shutil" and name in SHUTIL_WRITES):
        return args
    if owner == "os" and name == "open":
        flags = mode or (args[1] if len(args) > 1 else None)
        names = {dotted(n) for n in ast.walk(flags)} if flags is not None else set()
        return args[:1] if any(f"os.{flag}" in names or flag in names for flag in WRITE_FLAGS) else []
    if name == "open" and (owner is None or owner == "io"):  # open(path, mode)
        return args[:1] if writes_mode(mode or (args[1] if len(args) > 1 else None)) else []
    if not isinstance(func, ast.Attribute):
        return []
    if name == "open":  # path.open(mode)
        return [func.value] if writes_mode(mode or (args[0] if args else None)) else []
    if name == "replace" and (len(args) != 1 or owner == "dataclasses"):
        return []  # str.replace(old, new), dataclasses.replace(obj, **changes): not Path.replace(target)
    if name in PATH_WRITES:
        return [func.value, *args]  # a rename into spool/ is a spool write too
    return []


def writes_spool(call: ast.Call, tainted: set[str]) -> bool:
    func = call.func
    if (
        isinstance(func, ast.Attribute)
        and func.attr == "write"
        and (dotted(func.value) or "").split(".")[-1] == "spool"
    ):
        return True  # Spool.write, the raw write under the named steps: whatever its path, a spool one
    return any(mentions_spool(target, tainted) for target in write_targets(call))


def writes_mode(mode: ast.AST | None) -> bool:
    if mode is None:
        return False
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return any(c in mode.value for c in "wax+")
    return True  # a mode computed at run time may write


def own_nodes(scope: ast.AST):
    """The nodes of a function (or module) itself: nested functions are scopes of their own
    (yielded, their insides not)."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def assignments(nodes) -> list[tuple[ast.AST, ast.AST]]:
    """(target, value) of each assignment and loop: a target takes the value's spoolness."""
    pairs = []
    for node in nodes:
        if isinstance(node, ast.Assign):
            pairs += [(t, node.value) for t in node.targets]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
            pairs.append((node.target, node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            pairs.append((node.target, node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            pairs.append((node.optional_vars, node.context_expr))
    return pairs


def taint(pairs, tainted: set[str]) -> set[str]:
    """`tainted` plus every target assigned a spool path, until nothing changes (so that
    `d = layout.tmp; p = d / name` makes p one)."""
    tainted = set(tainted)
    while True:
        new = {
            name
            for target, value in pairs
            if mentions_spool(value, tainted)
            for t in ast.walk(target)
            if isinstance(t, (ast.Name, ast.Attribute)) and (name := dotted(t)) and name not in tainted
        }
        if not new:
            return tainted
        tainted |= new


def spool_writes(root: Path, allowed: set[str] = ALLOWED) -> list[str]:
    """`path:line: text` for every write primitive applied to a spool path under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, str(path))
        lines = text.splitlines()
        # self.<attribute> keeps its value from method to method: taken from the whole module
        attributes = {n for n in taint(assignments(ast.walk(tree)), SPOOL_NAMES) if n.startswith("self.")}
        for call in scope_writes(tree, SPOOL_NAMES | attributes):
            found.append(f"{rel}:{call.lineno}: {lines[call.lineno - 1].strip()}")
    return found


def scope_writes(scope: ast.AST, outer: set[str]) -> list[ast.Call]:
    """The calls in a function (or module) and the functions inside it that write a spool
    path; `outer`: the spool names it sees from outside."""
    nodes = list(own_nodes(scope))
    tainted = taint(assignments(nodes), outer)
    calls = []
    for node in nodes:
        if isinstance(node, ast.Call) and writes_spool(node, tainted):
            calls.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            calls += scope_writes(node, tainted)  # a closure sees its outer function's names
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


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
        # and the forms only a parse of the code tells apart
        'def f(self):\n    self.spool.layout.ticket("pending", n).unlink()',
        "def f(layout):\n    d = layout.tmp\n    p = d / 'x'\n    p.write_text('')",
        "class L:\n    def __init__(self, root):\n        self.jobs = Layout(root).jobs_file('x')\n"
        "    def save(self, data):\n        self.jobs.write_bytes(data)",
        "def f(tmp, layout):\n    tmp.replace(layout.ticket('done', 'n'))",
        "def f(layout):\n    with layout.intake_status.open('w') as out:\n        out.write('{}')",
        "fd = os.open(layout.lease(n), os.O_WRONLY | os.O_CREAT)",
        "[p.unlink() for p in layout.leases.iterdir()]",
        "shutil.rmtree(spool.layout.request_dir(rid))",
        "def f(layout):\n    d = layout.tmp\n    def g():\n        (d / 'x').unlink()",
    ]
    for i, text in enumerate(bad):
        (tmp_path / f"m{i}.py").write_text(text + "\n")
    found = spool_writes(tmp_path)
    assert sorted(line.split(":")[0] for line in found) == sorted(f"m{i}.py" for i in range(len(bad))), found


def test_writes_elsewhere_are_not_spool_writes(tmp_path):
    ok = [
        'logs = self.data_root / "logs"\nlogs.mkdir(parents=True, exist_ok=True)',
        "self.spool.layout.output_dir(request_id).mkdir(parents=True, exist_ok=True)",
        "self.spool.renew_lease(self.name, data)",
        'marker = json.loads(self.spool.layout.ticket("done", name).read_text())',
        # reading a spool file, a string's replace, a path named like a spool one elsewhere
        "with open(layout.lease(n)) as f:\n    f.read()",
        'name = layout.ticket("done", n).name.replace(".json", "")',
        "def f(layout):\n    path = layout.lease('n')\ndef g(root):\n    path = root / 'logs'\n    path.unlink()",
        "os.open(layout.lease(n), os.O_RDONLY | os.O_NOFOLLOW)",
        "sys.stderr.write(str(layout.tmp))",
    ]
    for i, text in enumerate(ok):
        (tmp_path / f"m{i}.py").write_text(text + "\n")
    assert spool_writes(tmp_path) == []


def test_what_the_check_knows_matches_the_code():
    """The spool paths it asked Layout for, and the write helpers it names still exist."""
    from sdgen import fsutil
    from sdgen.spool import publish

    assert {"ticket", "lease", "tmp", "inbox", "events", "jobs_file", "request_state", "spool"} <= SPOOL_PATHS
    assert not {"outputs", "output_dir", "logs", "mlflow_dir"} & SPOOL_PATHS
    assert all(hasattr(fsutil, name) or hasattr(publish, name) for name in HELPER_WRITES)
