"""The tree is the architecture (docs/ARCHITECTURE.md, layout): these rules keep it so.

Imports are read from the source with ast, imports inside functions included: a circle
hidden in a function is still a circle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "opskit"

# Lower layers never import higher ones. A module's layer is its top-level package.
LAYERS = [
    {"base"}, {"storage"}, {"git"}, {"wiring"}, {"notify", "reactions"}, {"deploy"}, {"guard"}, {"chain"}, {"jobs"},
    {"views"}, {"standins"}, {"demo"}, {"hookmain", "commands", "cli", "fastpath", "__main__", "__init__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """opskit modules imported by the file, anywhere in it (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("opskit"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("opskit"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{mod}: its package is in no layer; add it to LAYERS and docs/ARCHITECTURE.md")


def _package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_every_module_has_a_layer() -> None:
    for mod in MODULES:
        _layer(mod)


def test_imports_run_downward_only() -> None:
    bad = []
    for mod, deps in GRAPH.items():
        for dep in deps:
            if _package(dep) == _package(mod) or dep == "opskit":
                continue
            if _layer(dep) > _layer(mod):
                bad.append(f"{mod} imports {dep}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_circles() -> None:
    """Not even through a function-level import, and not between modules of one package."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if d == m or d == "opskit":
                continue
            # A package's __init__ importing its own submodules is how packages export.
            if m == _package(d) and m != d and d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
    assert not cycles, "import circles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_only_the_doors_import_commands() -> None:
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if d.startswith("opskit.commands") and not (m.startswith("opskit.commands") or m in ("opskit.cli", "opskit.fastpath"))]
    assert not bad, "\n".join(bad)


_SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE|PRAGMA)\b")


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if not m.startswith("opskit.storage")))
def test_no_sql_outside_storage(mod: str) -> None:
    text = MODULES[mod].read_text()
    assert "import sqlite3" not in text, f"{mod} imports sqlite3; storage/ owns the database"
    hits = [ln.strip() for ln in text.splitlines() if _SQL.search(ln)]
    assert not hits, f"{mod} holds SQL; move it into storage/: {hits[:3]}"


_GIT_ARGV = re.compile(r"""\[\s*["']git["']\s*,""")


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if not m.startswith(("opskit.git", "opskit.standins"))))
def test_no_git_process_outside_the_git_package(mod: str) -> None:
    text = MODULES[mod].read_text()
    assert not _GIT_ARGV.search(text), f"{mod} starts git itself; go through opskit.git"


def test_no_citations_of_documents_outside_the_repository() -> None:
    pat = re.compile(r"(ARCHITECTURE §|STYLE §|\bissue \d+\b)", re.I)
    hits = [f"{p.relative_to(SRC)}:{i}" for p in PKG.rglob("*.py")
            for i, ln in enumerate(p.read_text().splitlines(), 1) if pat.search(ln)]
    assert not hits, "cite docs/ARCHITECTURE.md, a test or a commit instead:\n" + "\n".join(hits[:40])


# Modules whose docstring states the rule for all of them: the commands (each imports its core
# in its body), the hook entry and the hooks' policies (the fast path imports os only).
_LAZY_BY_DESIGN = ("opskit.commands", "opskit.cli", "opskit.hookmain", "opskit.guard.lockdown")


def test_imports_inside_functions_say_why() -> None:
    """An import inside a function is a start-up saving and says so; anything else belongs at
    the top, where a circle would show."""
    silent = []
    for mod, path in MODULES.items():
        if mod.startswith(_LAZY_BY_DESIGN):
            continue
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skip:
                    here, before = lines[node.lineno - 1], lines[node.lineno - 2]
                    if "#" not in here and not before.strip().startswith("#"):
                        silent.append(f"{mod}:{node.lineno}: {here.strip()}")
    assert not silent, "imports inside functions without a reason:\n" + "\n".join(sorted(set(silent)))


def test_the_lazy_modules_say_so() -> None:
    for mod in ("opskit.commands", "opskit.hookmain", "opskit.guard.lockdown"):
        doc = ast.get_docstring(ast.parse(MODULES[mod].read_text())) or ""
        assert "start-up" in doc.lower() or "fast path" in doc.lower(), mod


def test_docs_architecture_names_every_module() -> None:
    """docs/ARCHITECTURE.md gives one line a module: a module it does not name is a room
    nobody was shown."""
    doc = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    layout = doc.split("## Layout", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, str] = {}
    current = ""
    for line in layout.splitlines():
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("    ") and stripped.endswith("/"):
            current = stripped.rstrip("/")
        if current:
            blocks[current] = blocks.get(current, "") + line + "\n"
    missing = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG)
        if p.name == "__init__.py" and len(rel.parts) > 1:
            continue
        if len(rel.parts) == 1:
            if p.name not in layout:
                missing.append(str(rel))
            continue
        pkg = rel.parts[0]
        if pkg in ("commands", "standins"):
            if f"{pkg}/" not in layout:
                missing.append(str(rel))
            continue
        if p.name not in blocks.get(pkg, ""):
            missing.append(str(rel))
    assert not missing, "docs/ARCHITECTURE.md, Layout, does not name: " + ", ".join(missing)


def test_every_row_of_the_threat_model_names_tests_that_exist() -> None:
    """docs/ARCHITECTURE.md, who may do what: each row names its tests, and each name is a real
    test file (and function, or a prefix of one) — a row whose test was renamed away is a bug."""
    doc = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    section = doc.split("## Who may do what", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| **")]
    assert len(rows) >= 6, rows
    tests = SRC.parent / "tests"
    for row in rows:
        refs = re.findall(r"`(test_\w+\.py)(?:::(\w+)\*?)?`", row.rsplit("|", 2)[1])
        assert refs, f"a threat-model row names no test: {row[:80]}"
        for file, func in refs:
            path = tests / file
            assert path.is_file(), f"{file} (named in the threat model) does not exist"
            if func:
                assert re.search(rf"^def {func}", path.read_text(), re.M), f"{file}::{func} does not exist"


def test_no_merge_conflict_markers_are_left_in_the_tree() -> None:
    """A merge resolved by hand can leave `<<<<<<<`/`>>>>>>>` lines behind (the README had them
    twice); the docs are contracts and the code would not even import."""
    root = Path(__file__).resolve().parents[1]
    left = []
    for top in ("src", "tests", "bench", "docs", "deploy"):
        for p in (root / top).rglob("*"):
            if p.is_file() and p.suffix in {".py", ".md", ".toml", ".yml", ".j2", ".sh", ".ini"}:
                for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                    if line.startswith(("<<<<<<< ", ">>>>>>> ")):
                        left.append(f"{p.relative_to(root)}:{n}")
    for n, line in enumerate((root / "README.md").read_text().splitlines(), 1):
        if line.startswith(("<<<<<<< ", ">>>>>>> ")):
            left.append(f"README.md:{n}")
    assert not left, "merge markers left: " + ", ".join(left)
