"""Imports point down and files never import each other in a circle.

The floors come from the table in docs/ARCHITECTURE.md ("Floors"), so the document and the
code cannot drift apart. Every import statement of the source counts, wherever it stands:
at the top of a file, inside a function or under `if TYPE_CHECKING:` (an import moved into
a function is still a dependency). A failure names the file, the line and the import. What
the family registry loads by name (`module:Class`, importlib) is a plug-in, not an import.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Edge:
    source: str      # importing module (dotted)
    target: str      # imported module of the project (dotted)
    path: str        # importing file, relative to the root
    line: int
    text: str        # the import statement as written

    def where(self) -> str:
        return f"{self.path}:{self.line}: `{self.text}`"


def read_floors(doc: Path) -> dict[str, int]:
    """package -> floor from the Floors table: rows `| N | `pkg` `pkg` | what lives there |`."""
    section = doc.read_text().split("## Floors", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if row.lstrip().startswith("|") and len(cells) >= 2 and cells[0].isdigit():
            for name in re.findall(r"`([\w.]+)`", cells[1]):
                floors[name] = int(cells[0])
    return floors


def modules(root: Path, packages: set[str]) -> dict[str, Path]:
    """dotted module name -> file, for every .py file under the top-level `packages`."""
    found = {}
    for top in sorted(packages):
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _nearest(name: str, known: dict[str, Path]) -> str | None:
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) or None


def imports(root: Path, known: dict[str, Path]) -> list[Edge]:
    """Every import of a project module by another one (outside libraries are left out)."""
    edges = []
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                         for alias in node.names]
            else:
                continue
            text = ast.unparse(node)
            for target in dict.fromkeys(filter(None, (_nearest(n, known) for n in names))):
                if target != module:
                    edges.append(Edge(module, target, str(path.relative_to(root)), node.lineno, text))
    return edges


def floor_of(module: str, floors: dict[str, int]) -> tuple[str, int] | None:
    """The package of the Floors table that holds `module` (the longest that fits)."""
    fits = [p for p in floors if module == p or module.startswith(p + ".")]
    return (max(fits, key=len), floors[max(fits, key=len)]) if fits else None


def upward(edges: list[Edge], floors: dict[str, int]) -> list[str]:
    """Imports that do not point down: to a package on the same or a higher floor."""
    problems = []
    for e in edges:
        src, dst = floor_of(e.source, floors), floor_of(e.target, floors)
        if src is None or dst is None:
            missing = e.source if src is None else e.target
            problems.append(f"{e.where()}: {missing} is on no floor of docs/ARCHITECTURE.md")
        elif src[0] != dst[0] and dst[1] >= src[1]:
            rule = ("packages on one floor do not import each other" if dst[1] == src[1]
                    else "imports point down")
            problems.append(f"{e.where()}: {src[0]} (floor {src[1]}) imports {dst[0]} "
                            f"(floor {dst[1]}); {rule}")
    return problems


def circles(edges: list[Edge]) -> list[list[Edge]]:
    """One closed path of imports per group of files that reach each other (Tarjan)."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for e in graph[v]:
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closed_path(sorted(g)[0], g, graph) for g in groups]


def _closed_path(start: str, group: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """The shortest chain of imports from `start` back to `start` inside `group`."""
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in graph[v]:
                if e.target == start:
                    return paths[v] + [e]
                if e.target in group and e.target not in paths:
                    paths[e.target] = paths[v] + [e]
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"no circle through {start}")


def describe(circle: list[Edge]) -> str:
    chain = " -> ".join([circle[0].source] + [e.target for e in circle])
    return f"import circle {chain}:" + "".join(f"\n    {e.where()}" for e in circle)


def check(root: Path, doc: Path) -> tuple[list[Edge], list[str]]:
    floors = read_floors(doc)
    known = modules(root, {p.split(".")[0] for p in floors})
    edges = imports(root, known)
    return edges, [describe(c) for c in circles(edges)] + upward(edges, floors)


def test_no_import_circles_and_every_import_points_down():
    edges, problems = check(ROOT, DOC)
    assert len(edges) > 300, f"only {len(edges)} imports read: the scan misses the source"
    assert not problems, "\n".join(problems)


def test_the_floors_table_covers_every_package_of_the_source():
    floors = read_floors(DOC)
    known = modules(ROOT, {p.split(".")[0] for p in floors})
    assert {"lus", "data_prep", "tune", "lus_dist.engine", "lus_dist.families", "hpc"} <= set(floors)
    # a package's own __init__ at the top (lus_dist/__init__.py) may stand on no floor
    # only while it imports nothing: then every file is held by the check above
    off = [m for m in known if floor_of(m, floors) is None and "." in m]
    assert not off, f"modules on no floor of {DOC.name}: {off}"


def test_the_check_names_file_line_and_import_of_a_circle_and_an_upward_import(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ARCHITECTURE.md").write_text(
        "# x\n## Floors\n| floor | packages | what |\n|---|---|---|\n"
        "| 2 | `top` | the user's side |\n| 1 | `low.a` `low.b` | the ground |\n## Next\n")
    files = {"top/__init__.py": "", "top/cli.py": "from low.a import run\n",
             "low/__init__.py": "", "low/a.py": "from . import b\n",
             "low/b.py": "def f():\n    from low.a import run\n    from top import cli\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    _, problems = check(tmp_path, tmp_path / "docs" / "ARCHITECTURE.md")
    assert problems == [
        "import circle low.a -> low.b -> low.a:\n"
        "    low/a.py:1: `from . import b`\n"
        "    low/b.py:2: `from low.a import run`",
        "low/a.py:1: `from . import b`: low.a (floor 1) imports low.b (floor 1); packages on "
        "one floor do not import each other",
        "low/b.py:2: `from low.a import run`: low.b (floor 1) imports low.a (floor 1); packages "
        "on one floor do not import each other",
        "low/b.py:3: `from top import cli`: low.b (floor 1) imports top (floor 2); "
        "imports point down"], "\n".join(problems)
