"""The source tree's own rules, checked: every module imports on its own, no import cycles, no
private names imported across modules, no module shadowed by a same-named attribute of its
package, and ``import qcompile`` changes nothing global."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {
    "qcompile": ROOT / "qcompile",
    "qcompile.passes": ROOT / "passes",
    "qcompile.runtime": ROOT / "runtime",
}


def _modules() -> dict[str, Path]:
    """Every module of the three packages, by import name."""
    out: dict[str, Path] = {}
    for pkg, base in PACKAGE_DIRS.items():
        for f in base.rglob("*.py"):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


MODULES = _modules()


def _package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement of a module,
    lazy ones inside functions included: a lazy import hides a cycle, it does not remove it."""
    tree = ast.parse(MODULES[name].read_text())
    out = []
    for s in ast.walk(tree):
        if isinstance(s, ast.Import):
            out.extend((a.name, [], s.lineno) for a in s.names)
        elif isinstance(s, ast.ImportFrom):
            mod = s.module or ""
            if s.level:
                base = _package_of(name)
                for _ in range(s.level - 1):
                    base = base.rsplit(".", 1)[0]
                mod = f"{base}.{mod}" if mod else base
            out.append((mod, [a.name for a in s.names], s.lineno))
    return out


def _edges(name: str) -> set[str]:
    """The qcompile modules ``name`` imports (a ``from pkg import submodule`` counts as importing
    the submodule)."""
    out = set()
    for mod, names, _ in _imports(name):
        if not mod.startswith("qcompile"):
            continue
        subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES]
        out.update(subs or [mod])
    out.discard(name)
    return {m for m in out if m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = {m: _edges(m) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles():
    assert _cycles() == []


def test_cycle_finder_finds_a_planted_cycle(monkeypatch):
    """The check can fail: two modules importing each other are reported."""
    graph_edges = {"qcompile.a": {"qcompile.b"}, "qcompile.b": {"qcompile.a"}}
    monkeypatch.setattr(
        sys.modules[__name__], "MODULES", {"qcompile.a": Path("a.py"), "qcompile.b": Path("b.py")}
    )
    monkeypatch.setattr(sys.modules[__name__], "_edges", lambda m: graph_edges[m])
    assert _cycles() == [["qcompile.a", "qcompile.b"]]


def test_no_private_names_imported_across_modules():
    offenders = [
        f"{name}:{line} imports {n} from {mod}"
        for name in MODULES
        for mod, names, line in _imports(name)
        if mod.startswith("qcompile") and mod != name
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert offenders == []


def test_no_module_is_shadowed_by_its_package():
    """``pkg.name`` must be the module ``pkg/name.py``, never a function re-exported under the
    same name (``qcompile.plan`` is a function, so no module is called ``qcompile/plan.py``)."""
    shadowed = []
    for name in MODULES:
        pkg, _, leaf = name.rpartition(".")
        if not pkg or pkg not in MODULES or MODULES[pkg].name != "__init__.py":
            continue
        for mod, names, _ in _imports(pkg):
            if leaf in names and f"{mod}.{leaf}" != name:
                shadowed.append(f"{name} is shadowed by {leaf} from {mod}")
    assert shadowed == []


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module on its own, in module order: an import that only works after another module
    was imported first (a hidden cycle or order dependence) fails here."""
    code = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for m in {sorted(MODULES)!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{m}: {e!r}')\n"
        "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("module", sorted(m for m in MODULES if ".reference" in m))
def test_references_import_no_ops_kernels_or_inductor(module):
    """Reference quantizers are plain PyTorch: readable and importable without the compiler."""
    imported = {mod for mod, _, _ in _imports(module)}
    assert not {
        m
        for m in imported
        if m.startswith(("qcompile.runtime.ops", "qcompile.runtime.kernels", "triton", "torch._inductor"))
    }


def test_every_package_is_installed():
    """pyproject lists the packages explicitly (three import names map to three folders): a new
    subpackage left out of that list would work from the source tree and vanish from the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == listed
