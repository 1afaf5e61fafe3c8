"""Submit the synthlearn Flower app and watch it to the end, with live progress.

Used by ``synthlearn coordinator run`` and ``synthlearn demo``. Two things Flower does not do
for us: ``flwr run`` returns as soon as the run is *submitted* (and exits 0 even when the run
later fails), so the final status is read with ``flwr ls``; and progress is read from the
coordinator's own state file (phases) and round log, which the ServerApp writes in the work
folder, so the person at the console sees the run move phase by phase.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import FlowerProcessError
from shared.flower_proc import flwr_run, run_log, wait_for_run

PACKAGES = ("node", "coordinator", "shared")


def app_dir(staging: Path) -> Path:
    """The Flower app folder: the source tree when it has the Flower tables, else a staged
    copy of the installed packages with a generated pyproject.toml (wheel installs)."""
    import coordinator

    root = Path(coordinator.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        doc = tomllib.loads(pyproject.read_text())
        if doc.get("tool", {}).get("flwr", {}).get("app"):
            return root
    return _stage(root, staging)


def _stage(root: Path, staging: Path) -> Path:
    from coordinator.phases import run_config_defaults
    from shared import __version__

    if staging.exists():
        shutil.rmtree(staging)
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, staging / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
    config_lines = "\n".join(f"{k} = {json.dumps(v) if isinstance(v, str) else _toml(v)}"
                             for k, v in run_config_defaults().items())
    (staging / "pyproject.toml").write_text(f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "synthlearn"
version = "{__version__}"
dependencies = ["flwr==1.41.*"]

[tool.flwr.app]
publisher = "synthlearn"

[tool.flwr.app.components]
serverapp = "coordinator.server_app:app"
clientapp = "node.client_app:app"

[tool.flwr.app.config]
{config_lines}
""")
    return staging


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


class _Watcher:
    """Prints phase changes and round timings as they appear in the work folder."""

    def __init__(self, work: Path, run: str, echo: Any) -> None:
        self.work, self.run, self.echo = work, run, echo
        self.phases_seen: set[str] = set()
        self.rounds_seen = 0
        self.t0 = time.monotonic()

    def __call__(self, row: Mapping[str, Any]) -> None:
        elapsed = time.monotonic() - self.t0
        db = self.work / "state.db"
        if db.exists():
            from coordinator.state import CoordinatorState

            try:
                st = CoordinatorState(db)
                done = st.completed_phases(self.run)
                st.close()
            except Exception:  # the ServerApp may be mid-write; next poll will see it
                done = []
            for phase in done:
                if phase not in self.phases_seen:
                    self.phases_seen.add(phase)
                    self.echo(f"[{elapsed:6.0f} s] phase {phase} done")
        rounds = self.work / "rounds.jsonl"
        if rounds.exists():
            lines = rounds.read_text().splitlines()
            for line in lines[self.rounds_seen:]:
                r = json.loads(line)
                self.echo(f"[{elapsed:6.0f} s] Flower round {r['kind']}: {r['replies']}/"
                          f"{r['nodes']} replies in {r['seconds']} s")
            self.rounds_seen = len(lines)
        self.echo(f"[{elapsed:6.0f} s] run status: {row.get('status')}", transient=True)


def submit_and_watch(connection: str, cli_home: Path, run_config: Mapping[str, Any],
                     *, timeout: float, echo: Any, poll: float = 3.0,
                     signing: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """``flwr run`` + poll ``flwr ls`` until finished; raise unless ``finished:completed``.

    ``signing`` is (the SuperLink's database, the operator's app-signing key): the app is
    signed into the SuperLink's record as soon as it is submitted (coordinator/app_signing.py);
    SuperNodes started with the operator's public key refuse it otherwise.
    """
    from shared.errors import RunFailedError

    staging = Path(str(run_config["work-dir"])) / "app"
    app = app_dir(staging)
    fab = None
    if signing is not None:
        from coordinator.app_signing import check_signing, freeze_app

        check_signing(*signing)
        app, fab = freeze_app(app, Path(str(run_config["work-dir"])) / "app-signed")
    run_id = flwr_run(app, connection, cli_home, run_config)
    if signing is not None and fab is not None:
        from coordinator.app_signing import attach_signature

        digest = attach_signature(signing[0], fab, signing[1])
        echo(f"signed app {digest[:12]}… with {signing[1]}")
    echo(f"submitted Flower run {run_id} (app {app})")
    watcher = _Watcher(Path(str(run_config["work-dir"])), str(run_config.get("run-name", "run")),
                       echo)
    try:
        row = wait_for_run(connection, cli_home, run_id, timeout=timeout, poll=poll,
                           on_poll=watcher)
    except RunFailedError as exc:
        log = ""
        with contextlib.suppress(FlowerProcessError):
            log = run_log(connection, cli_home, run_id)
        tail = "\n".join(log.splitlines()[-25:])
        raise RunFailedError(f"{exc}\n--- last lines of the ServerApp log ---\n{tail}") from None
    watcher(row)
    row["run_id"] = run_id
    return row


class ConsoleEcho:
    """Live progress on stderr: permanent lines for events, one spinner line for status."""

    def __init__(self) -> None:
        from shared.progress import stderr_console

        self.console = stderr_console
        self._status: Any = None

    def __enter__(self) -> ConsoleEcho:
        self._status = self.console.status("starting …")
        self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(None, None, None)
            self._status = None

    def __call__(self, message: str, transient: bool = False) -> None:
        if transient and self._status is not None:
            self._status.update(message)
        elif not transient:
            self.console.print(message, highlight=False)
