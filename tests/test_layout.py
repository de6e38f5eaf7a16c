"""The house's rules, read from the source with `ast`: imports point down the layers, no import
cycle, no recipe imports another, and the README's layout section names what the tree holds."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rtune_ds"
README = PKG.parent / "README.md"

# lower layers never import higher ones; inside a layer, packages import each other without cycles
LAYERS = {
    "rtune_ds": 0, "errors": 0, "io": 0, "dist": 0, "resources": 0, "config": 0, "launch": 0,
    "console": 0, "hardware": 0, "files": 0, "report": 0,
    "models": 1, "data": 1, "train": 1, "artifacts": 1, "recycling": 1, "analysis": 1,
    "jobs": 2,
    "recipes": 3,
    "demo": 4,
    "cli": 5, "__main__": 5,
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """module -> the rtune_ds modules it imports (anywhere in it, function bodies included)."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rtune_ds"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in paths else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("rtune_ds")}
        graph[name] = targets - {name}
    return graph


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in graph.items():
        for target in targets:
            a, b = package(source), package(target)
            if a not in LAYERS or b not in LAYERS:
                bad.append(f"{source} -> {target}: package without a layer in LAYERS")
            elif LAYERS[b] > LAYERS[a]:
                bad.append(f"{source} -> {target}: upward ({a} is below {b})")
            elif a == b == "recipes":
                bad.append(f"{source} -> {target}: a recipe imports another recipe")
    return sorted(bad)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for source, targets in graph.items():
        out.setdefault(package(source), set()).update(
            package(t) for t in targets if package(t) != package(source))
    return out


def test_imports_point_down_the_layers_and_recipes_stand_alone():
    assert layer_violations(import_graph()) == []


def test_no_import_cycle_between_modules_or_packages():
    graph = import_graph()
    assert find_cycle(graph) is None
    assert find_cycle(package_graph(graph)) is None


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A cycle, an upward arrow and a recipe importing a recipe, planted in a scratch tree."""
    root = tmp_path / "rtune_ds"
    for rel, text in {
        "__init__.py": "", "io.py": "from rtune_ds.models import loader\n",
        "models/__init__.py": "", "models/loader.py": "from rtune_ds.models import zero\n",
        "models/zero.py": "def f():\n    from rtune_ds.models.loader import g\n",
        "recipes/__init__.py": "", "recipes/a.py": "from rtune_ds.recipes.b import run\n",
        "recipes/b.py": "",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    graph = import_graph(root)
    assert find_cycle(graph) in (["rtune_ds.models.loader", "rtune_ds.models.zero",
                                  "rtune_ds.models.loader"],
                                 ["rtune_ds.models.zero", "rtune_ds.models.loader",
                                  "rtune_ds.models.zero"])
    bad = layer_violations(graph)
    assert any(v.startswith("rtune_ds.io -> rtune_ds.models.loader: upward") for v in bad), bad
    assert any("a recipe imports another recipe" in v for v in bad), bad


def readme_layout() -> set[str]:
    """The top-level entries of rtune_ds/ that the README's layout block names."""
    text = README.read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return set(re.findall(r"^  ([a-z_]+(?:\.py|/))", block, re.M))


def test_readme_layout_matches_the_tree():
    tree = {p.name + ("/" if p.is_dir() else "") for p in PKG.iterdir()
            if p.name not in ("__init__.py", "__main__.py", "__pycache__")}
    assert readme_layout() == tree
