"""The package layout is the pipeline: no import cycle, and no package imports one above it.

Every import is counted, function-level ones included (they hid two cycles once).
"""

import ast
from pathlib import Path

import gradselect

ROOT = Path(gradselect.__file__).parent

#: Packages and top-level modules by layer; a module may import only its own layer and those below.
LAYERS = [
    {"errors", "configbase", "io"},
    {"data"},
    {"model"},
    {"train"},
    {"features"},
    {"estimate"},
    {"select"},
    {"evaluate"},
    {"validate"},
    {"config"},
    {"report", "export"},
    {"pipeline"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every gradselect module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gradselect")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gradselect"):
            found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    missing = {top(m) for m in graph()} - set(RANK) - {"__init__"}
    assert not missing, f"add {sorted(missing)} to LAYERS"


def test_no_upward_import():
    upward = []
    for module, targets in graph().items():
        if top(module) == "__init__":
            continue
        for target in targets:
            if top(target) != "__init__" and RANK[top(target)] > RANK[top(module)]:
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the pipeline order:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_packages():
    edges = {}
    for module, targets in graph().items():
        edges.setdefault(top(module), set()).update(top(t) for t in targets if top(t) != top(module))
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, stack):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for node in list(edges):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_checker_catches_a_function_level_cycle(tmp_path):
    # The walk sees imports inside functions, which is where the old cycles hid.
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from gradselect.pipeline import run_pipeline\n")
    assert imports(src) == {"gradselect.pipeline"}
