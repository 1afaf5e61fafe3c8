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


def test_flower_run_config_defaults_are_one_table() -> None:
    from coordinator.phases import run_config_defaults

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert declared["config"] == run_config_defaults()


def test_one_version() -> None:
    import shared

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project.get("dynamic", [])
    assert shared.__version__ == project["version"]
