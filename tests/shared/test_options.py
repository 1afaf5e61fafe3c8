"""Every command's numeric options: a bad value (0, negative, text) is one line naming the
option and exit 2, before anything is read or written; a TOML value survives when its option
is not given."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import typer

from shared import cli

ZERO_ALLOWED = {
    ("node", "make-phantoms", "--seed"), ("node", "make-phantoms", "--size"),
    ("node", "preprocess", "--workers"), ("node", "import-npz", "--size"),
    ("node", "train", "--seed"), ("node", "baseline", "--seed"), ("node", "generate", "--seed"),
    ("node", "audit", "--max-copy-rate"), ("coordinator", "train", "--patience"),
    ("node", "reader-study", "--seed"), ("demo", "--seed"),
    ("node", "train-patches", "--seed"), ("node", "baseline", "--min-steps"),
}
"""Where 0 means something (a seed; 'automatic'; a zero-tolerance gate; never stop early; no
step floor)."""


def _commands() -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            out.append((path, cmd))

    walk(typer.main.get_command(cli.app), ())
    return out


def _cases() -> list[tuple[tuple[str, ...], str, str, list[str]]]:
    cases = []
    for path, cmd in _commands():
        required: list[str] = []
        for p in cmd.params:
            if p.required and isinstance(p, click.Argument):
                required.append("placeholder")
            elif p.required and isinstance(p, click.Option):
                required += [p.opts[-1], "placeholder"]
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.type.name not in (
                    "integer", "float", "integer range", "float range"):
                continue
            flag = max(p.opts, key=len)
            bad = ["-1", "abc"] + ([] if (*path, flag) in ZERO_ALLOWED else ["0"])
            if p.type.name in ("float", "float range"):
                bad.append("nan")  # passes every `v <= 0` check unless refused explicitly
            cases += [(path, flag, value, required) for value in bad]
    return cases


CASES = _cases()


def test_every_command_has_been_found() -> None:
    names = {" ".join(path) for path, _ in _commands()}
    assert {"node train", "node baseline", "node audit", "coordinator train", "demo",
            "node preprocess", "coordinator run"} <= names
    assert len(CASES) > 60


@pytest.mark.parametrize(("path", "flag", "value", "required"), CASES,
                         ids=[f"{' '.join(c[0])} {c[1]}={c[2]}" for c in CASES])
def test_invalid_numeric_option_is_one_line_naming_it(
        path: tuple[str, ...], flag: str, value: str, required: list[str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # nothing a failed command might write lands in the repo
    # The option under test first: click reports the first bad parameter it processes.
    argv = ["synthlearn", *path, f"{flag}={value}",
            *[str(tmp_path / "absent") if a == "placeholder" else a for a in required]]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    assert flag in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "a refused command must not write anything"


@pytest.mark.parametrize(("argv", "table"), [(["node", "train", "--help"], "[gan]"),
                                             (["node", "baseline", "--help"], "[classifier]"),
                                             (["node", "audit", "--help"], "[audit]")])
def test_help_keeps_toml_table_names(argv: list[str], table: str,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["synthlearn", *argv])
    with pytest.raises(SystemExit):
        cli.main()
    assert table in " ".join(capsys.readouterr().out.split())


def test_bad_toml_value_names_the_file_and_table(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("[gan]\nbatch = 1\n")
    monkeypatch.setattr("sys.argv", ["synthlearn", "node", "train", "--site-dir",
                                     str(tmp_path / "absent"), "--config", str(toml)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert "run.toml [gan]" in err and "batch must be ≥ 2" in err


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_toml_nan_or_inf_is_refused_for_a_float_field(text: str, tmp_path: Path) -> None:
    """TOML spells nan and inf; a NaN time cap would make `elapsed > cap` never true."""
    from node.training import GanConfig
    from shared.config import resolve
    from shared.errors import ConfigError

    toml = tmp_path / "run.toml"
    toml.write_text(f"[gan]\nmax_minutes = {text}\n")
    with pytest.raises(ConfigError, match="finite"):
        resolve(GanConfig, toml=toml, table="gan")


@pytest.mark.parametrize(("item", "says"), [("n-synthetic", "expected key=value"),
                                            ("=5", "expected key=value"),
                                            ("n-synthetic=abc", "n_synthetic"),
                                            ("n_synthetic=5", "unknown key 'n_synthetic'"),
                                            ("cnn-epochs=0", "epochs must be")])
def test_bad_run_config_item_is_refused_before_anything_is_written(
        item: str, says: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`coordinator run -c ITEM`: one line naming the item, exit 2, and no connection file or
    work folder left behind (the check runs before the run is submitted)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["synthlearn", "coordinator", "run", "--insecure",
                                     "--trust", str(tmp_path / "trust"),
                                     "--work", str(tmp_path / "work"), "-c", item])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert says in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
