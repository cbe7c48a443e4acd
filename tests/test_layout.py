"""The package layout: imports read from the source (ast), never by importing.

- no import circles between modules of `nas`;
- dependencies point one way, from the commands down to the data (the stage order below);
- project imports sit at the top of a file (none inside functions);
- generic code asks a model's family (nas.models.registry), not which family it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nas"

# Bottom to top: a module may import from its own stage and from the stages before it.
STAGES = [
    ("nas.util", "nas.redact", "nas.spec", "nas.config"),
    ("nas.data",),
    ("nas.models",),
    ("nas.cut",),
    ("nas.quality",),
    ("nas.deploy",),
    ("nas.cost",),
    ("nas.study",),
    ("nas.search", "nas.export", "nas.train"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "hf_remote" not in p.parts}


def project_imports(path: Path, known: set[str]) -> list[tuple[str, int, bool, bool]]:
    """(imported module, line, inside a function, under `if TYPE_CHECKING`) for every nas import."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nas":
            # `from nas.models import encoder` imports the submodule nas.models.encoder
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "nas"]
        else:
            continue
        inside = checking = False
        up = parents.get(node)
        while up is not None:
            inside |= isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef))
            checking |= isinstance(up, ast.If) and "TYPE_CHECKING" in ast.unparse(up.test)
            up = parents.get(up)
        found += [(t, node.lineno, inside, checking) for t in targets]
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {t for t, *_ in project_imports(path, set(mods)) if t in mods and t != name}
            for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def stage_of(module: str) -> int:
    for i, names in enumerate(STAGES):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} belongs to no stage of tests/test_layout.py's STAGES: place it")


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_dependencies_point_from_the_commands_down_to_the_data():
    upward = [f"{src} imports {dst}" for src, targets in import_graph().items() for dst in targets
              if stage_of(dst) > stage_of(src)]
    assert upward == []


def test_project_imports_are_at_the_top_of_each_file():
    mods = modules()
    local = [f"{path.relative_to(ROOT)}:{line} imports {target}" for path in mods.values()
             for target, line, inside, _ in project_imports(path, set(mods)) if inside]
    assert local == []


def test_every_stage_says_what_it_takes_and_gives():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 15, f"{init.relative_to(ROOT)} needs a docstring for its stage"


def test_generic_code_asks_the_family_not_which_family():
    """Outside nas.models only the registry's Family answers questions about a model's family."""
    private = {"is_decoder", "is_decoder_config", "DECODER_TYPES", "ARCHES", "arch_for_config"}
    asked = []
    for name, path in modules().items():
        if name.startswith("nas.models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nas.models"):
                asked += [f"{name} imports {a.name}" for a in node.names if a.name in private]
    assert asked == []
