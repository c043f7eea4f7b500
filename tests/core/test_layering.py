"""The architecture, checked on the source: who may import whom.

The import graph is built from the AST of every module under ``src/``
(imports inside functions included), not by matching strings, so a relative
import, an aliased one or one hidden in a function counts like any other.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def _modules(root=SRC) -> dict:
    """Module name -> (path, is_package) for every .py file under ``root``."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def imports_of(name: str, path: pathlib.Path, package: bool, known) -> set:
    """The modules of ``known`` that module ``name`` imports, resolved to the deepest known module."""
    here = name.split(".") if package else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def import_graph(root=SRC) -> dict:
    known = _modules(root)
    return {name: imports_of(name, path, package, known) for name, (path, package) in known.items()}


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


GRAPH = import_graph()


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_both_packages():
    assert "colu.functional" in GRAPH and "colu_lab.registry" in GRAPH
    assert "colu.ops.plans" in GRAPH["colu.functional"]


def test_no_import_cycle_anywhere():
    assert cycles(GRAPH) == []


def test_the_library_never_imports_the_suite():
    offenders = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _in(m, "colu") for t in ts if _in(t, "colu_lab"))
    assert offenders == []


def test_the_framework_never_imports_an_experiment_or_a_command():
    offenders = sorted(
        f"{m} -> {t}" for m, ts in GRAPH.items() if _in(m, "colu_lab.framework") for t in ts
        if _in(t, "colu_lab.experiments") or _in(t, "colu_lab.commands") or t in ("colu_lab.registry", "colu_lab.cli")
    )
    assert offenders == []


def test_an_experiment_imports_no_other_experiment():
    def folder(module):
        return module.split(".")[2] if _in(module, "colu_lab.experiments") and module.count(".") >= 2 else None

    offenders = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if folder(m) for t in ts
                       if folder(t) and folder(t) != folder(m))
    assert offenders == []


def test_functional_reaches_the_ops_only_through_the_plans():
    """colu.functional holds the public functions; the backends, the autograd Functions and the dispatch are
    reached through one entry, colu.ops.plans."""
    reached = sorted(t for t in GRAPH["colu.functional"] if _in(t, "colu.ops"))
    assert reached == ["colu.ops.plans"]


def test_the_checks_catch_what_they_claim(tmp_path):
    """The graph resolves relative, aliased and in-function imports, and finds a cycle through them."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b as renamed\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import thing\n")
    (pkg / "c.py").write_text("import pkg.a\nthing = 1\n")
    graph = import_graph(tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
