"""The root console script: exit codes reach the shell and every documented sub-app exists."""

from __future__ import annotations

import pytest
import typer

from shared import cli


def _run_main(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    monkeypatch.setattr("sys.argv", ["synthlearn", *argv])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    code = exc.value.code
    return int(code) if code is not None else 0


def test_typer_exit_code_reaches_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    # click returns (not raises) a command's typer.Exit code in non-standalone mode; `demo`
    # relies on main() passing it on (130 after Ctrl-C).
    def stop() -> None:
        raise typer.Exit(130)

    monkeypatch.setattr(cli, "app", typer.Typer())
    cli.app.command("stop")(stop)
    cli.app.command("other")(lambda: None)
    assert _run_main(monkeypatch, ["stop"]) == 130


def test_successful_command_exits_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_main(monkeypatch, ["node", "--help"]) == 0


def test_synthlearn_error_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    code = _run_main(monkeypatch, ["node", "inspect", "--site-dir", f"{tmp_path}/nowhere"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nowhere" in err and "Traceback" not in err


def test_sub_apps_and_no_bare_node_script() -> None:
    from importlib.metadata import entry_points

    names = {g.name for g in cli.app.registered_groups}
    assert {"node", "coordinator", "audit"} <= names
    scripts = {e.name for e in entry_points(group="console_scripts")
               if e.value.startswith(("shared.", "node.", "coordinator."))}
    assert scripts == {"synthlearn"}
