"""The import structure of the packages, read from the source (ast), every import counted: module level,
inside functions, under ``if TYPE_CHECKING``.

Data flows one way: curate at the bottom (readers, shapes, the workspace), chat on it (conversations, the chat
template, model loading, generation), train and evalsuite on chat and curate, the review app on top:

- curate imports none of chat, train, evalsuite, app (``curate app`` starts the app by its path, a new process);
- chat imports none of train, evalsuite, app;
- train and evalsuite never import each other, nor the app;
- no import cycle among the modules of any package, nor among the packages.

A failure prints the offending import (file:line) or the cycle. The checker itself is tested on a planted
package, so a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("curate", "chat", "train", "evalsuite", "app")
# package -> the packages it must never import
FORBIDDEN = {
    "curate": {"chat", "train", "evalsuite", "app"},
    "chat": {"train", "evalsuite", "app"},
    "train": {"evalsuite", "app"},
    "evalsuite": {"train", "app"},
    "app": set(),
}


def modules(root: Path, packages: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__) for every .py file of ``packages`` under ``root``."""
    out = {}
    for pkg in packages:
        for file in sorted((root / pkg).rglob("*.py")):
            parts = list(file.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (file, is_pkg)
    return out


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, dict[str, int]]:
    """Module -> {imported module of these packages: first line}. ``from a.b import c`` counts as importing
    ``a.b.c`` when that is a module, else ``a.b``; relative imports are resolved; imports of anything outside
    the packages are left out."""
    mods = modules(root, packages)

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for mod, (file, is_pkg) in mods.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base) for a in node.names]
            for t in targets:
                if t and t != mod:
                    edges.setdefault(t, node.lineno)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each as a cycle through them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        # iterative Tarjan: (node, iterator over its successors)
        work = [(v, iter(graph.get(v, ())))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, succ = work[-1]
            for w in succ:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        found.append(_cycle_through(set(comp), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_through(comp: set[str], graph: dict[str, Iterable[str]]) -> list[str]:
    """One cycle inside a strongly connected component, for the message: a -> b -> ... -> a."""
    start = min(comp)
    path, seen = [start], {start}
    node = start
    while True:
        nxt = sorted(w for w in graph[node] if w in comp)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return path + [start]
        step = next((w for w in nxt if w not in seen), None)
        if step is None:  # every successor seen: close at the first one on the path
            w = nxt[0]
            return path[path.index(w):] + [w]
        path.append(step)
        seen.add(step)
        node = step


def problems(root: Path, packages: Iterable[str] = PACKAGES) -> list[str]:
    """Every forbidden import and every cycle (inside a package, or among packages), one line each."""
    graph = import_graph(root, packages)
    out = []
    for mod, edges in sorted(graph.items()):
        pkg = mod.split(".")[0]
        for target, line in sorted(edges.items()):
            if target.split(".")[0] in FORBIDDEN.get(pkg, set()):
                file = modules(root, [pkg])[mod][0].relative_to(root)
                out.append(f"{file}:{line}: {pkg} imports {target} ({pkg} must not import {', '.join(sorted(FORBIDDEN[pkg]))})")
    for pkg in packages:
        inside = {m: [t for t in e if t.split(".")[0] == pkg] for m, e in graph.items() if m.split(".")[0] == pkg}
        out += [f"import cycle in {pkg}: {' -> '.join(c)}" for c in cycles(inside)]
    between: dict[str, set[str]] = {p: set() for p in packages}
    for mod, edges in graph.items():
        between[mod.split(".")[0]] |= {t.split(".")[0] for t in edges} - {mod.split(".")[0]}
    out += [f"import cycle among packages: {' -> '.join(c)}" for c in cycles(between)]
    return out


def test_packages_import_downwards_only_and_have_no_cycles():
    found = problems(REPO)
    assert not found, "\n".join(found)


def test_every_module_is_read():
    graph = import_graph(REPO, PACKAGES)
    assert {"evalsuite.compare", "evalsuite.metrics.base", "chat.models", "train.callbacks", "curate.cli", "app.serve"} <= set(graph)
    # imports inside functions count: evalsuite.cli imports the runner only inside its commands
    assert "evalsuite.runner" in graph["evalsuite.cli"]
    # `from X import name` is an import of X, `from X import submodule` of the submodule
    assert "chat.generate" in graph["train.callbacks"] and "evalsuite.metrics.base" in graph["evalsuite.metrics.text"]


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_checker_finds_a_planted_cycle_and_forbidden_imports(tmp_path):
    _plant(tmp_path, {
        "curate/__init__.py": "",
        "curate/readers.py": "def read():\n    from app.main import page  # inside a function\n",
        "chat/__init__.py": "",
        "chat/models.py": "from curate import readers\n",
        "train/__init__.py": "",
        "train/trainer.py": "from chat.models import x\n",
        "evalsuite/__init__.py": "",
        "evalsuite/judge.py": "from . import metrics\n",
        "evalsuite/metrics/__init__.py": "from .base import register\n",
        "evalsuite/metrics/base.py": "def f():\n    from evalsuite.runner import run\n",
        "evalsuite/runner.py": "import evalsuite.judge\nfrom train.trainer import t\n",
        "app/__init__.py": "",
        "app/main.py": "import evalsuite.runner\n",
    })
    found = problems(tmp_path)
    assert "curate/readers.py:2: curate imports app.main (curate must not import app, chat, evalsuite, train)" in found
    assert "evalsuite/runner.py:2: evalsuite imports train.trainer (evalsuite must not import app, train)" in found
    cycle = [p for p in found if p.startswith("import cycle in evalsuite: ")]
    assert len(cycle) == 1
    assert set(cycle[0].removeprefix("import cycle in evalsuite: ").split(" -> ")) == {
        "evalsuite.judge", "evalsuite.metrics", "evalsuite.metrics.base", "evalsuite.runner"}
    assert "import cycle among packages: app -> evalsuite -> train -> chat -> curate -> app" in found
    assert len(found) == 4, found
