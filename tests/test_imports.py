"""The import graph: the engine knows nothing of the spool, and no sdgen modules import
each other in a cycle (module-level imports; imports inside functions are the lazy ones a
registry uses by name)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDGEN = ROOT / "sdgen"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SDGEN.rglob("*.py"))}


def _top_level(body):
    """Import statements run when the module is imported: at module level, also inside
    module-level if/try/with blocks, never inside functions or classes."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level(block)
        elif isinstance(node, ast.With):
            yield from _top_level(node.body)


def imports(name: str, all_levels: bool = False) -> set[str]:
    """The sdgen modules `name` imports (module level only unless `all_levels`)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    nodes = (
        [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        if all_levels
        else list(_top_level(tree.body))
    )
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def test_the_graph_sees_every_module():
    assert "sdgen.engine.base" in MODULES and "sdgen.spool.ticket" in MODULES
    assert "sdgen.engine.settings" in imports("sdgen.engine.dryrun")


def test_the_engine_does_not_import_the_spool():
    """The engine knows prompts, seeds and images (engine/base.py: ImageJob); the worker
    translates tickets. Lazy imports count too."""
    bad = {
        (name, target)
        for name in MODULES
        if name.startswith("sdgen.engine")
        for target in imports(name, all_levels=True)
        if target.startswith("sdgen.spool")
    }
    assert not bad


def test_interfaces_import_no_implementation():
    assert not {
        t
        for t in imports("sdgen.engine.base", all_levels=True)
        if t.startswith("sdgen.engine.") and t != "sdgen.engine.base"
    }
    assert not {
        t
        for t in imports("sdgen.launchers.base", all_levels=True)
        if t.startswith("sdgen.launchers.") and t != "sdgen.launchers.base"
    }


def test_no_import_cycles():
    graph = {name: imports(name) for name in MODULES}
    cycles, state = [], {}  # state: 1 on the current path, 2 finished

    def visit(name, path):
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
