"""The structure ARCHITECTURE.md promises, checked on the source: who may import whom, one
table of run-config defaults, one version."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAY_IMPORT_NODE = {"coordinator/demo.py", "coordinator/local_transport.py"}
"""The coordinator modules that play sites on one machine (the demo, the in-process loopback)."""


def imported_packages(source: str) -> set[str]:
    """Top-level packages a module imports, anywhere in it (function-level imports too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def violations(root: Path) -> list[str]:
    """Every import that breaks the rules, as 'file imports package'."""
    found = []
    for package, banned in (("shared", {"node", "coordinator"}), ("node", {"coordinator"}),
                            ("coordinator", {"node"})):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if package == "coordinator" and rel in MAY_IMPORT_NODE:
                continue
            for bad in sorted(imported_packages(path.read_text(encoding="utf-8")) & banned):
                found.append(f"{rel} imports {bad}")
    return found


def test_import_rules_hold() -> None:
    assert violations(REPO) == []


def test_import_rules_catch_each_kind_of_breach(tmp_path: Path) -> None:
    for rel, text in (("shared/a.py", "def f():\n    from coordinator.pool import x\n"),
                      ("shared/b.py", "import node.store\n"),
                      ("node/c.py", "from coordinator import phases\n"),
                      ("coordinator/d.py", "from node.federation import handle_ping\n"),
                      ("coordinator/demo.py", "from node.ingest import preprocess\n"),
                      ("coordinator/e.py", "from shared.protocol import PROTOCOL\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert violations(tmp_path) == ["shared/a.py imports coordinator", "shared/b.py imports node",
                                    "node/c.py imports coordinator",
                                    "coordinator/d.py imports node"]


def imported_modules(source: str) -> set[str]:
    """Dotted names a module imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def mutual_imports(root: Path) -> list[tuple[str, str]]:
    """Pairs of our modules that import each other (even inside functions): data flows one way,
    so one of the two should own what both need."""
    deps: dict[str, set[str]] = {}
    for package in ("node", "coordinator", "shared"):
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            deps[name] = imported_modules(path.read_text(encoding="utf-8"))
    return sorted({(min(a, b), max(a, b)) for a, used in deps.items() for b in used
                   if b != a and a in deps.get(b, ())})


def test_no_two_modules_import_each_other(tmp_path: Path) -> None:
    assert mutual_imports(REPO) == []
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "a.py").write_text("def f():\n    from node.b import x\n")
    (tmp_path / "node" / "b.py").write_text("from node import a\n")
    assert mutual_imports(tmp_path) == [("node.a", "node.b")]


def test_flower_run_config_defaults_are_one_table() -> None:
    from coordinator.phases import run_config_defaults

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert declared["config"] == run_config_defaults()


def test_one_version() -> None:
    import shared

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project.get("dynamic", [])
    assert shared.__version__ == project["version"]
