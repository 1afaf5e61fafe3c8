"""A real loopback SuperLink + SuperNodes and one ping round through the repo's Flower app."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import FlowerProcessError
from shared.flower_proc import (
    SAFE_ENV,
    flower_env,
    node_config_arg,
    superlink_argv,
    supernode_argv,
)


def test_every_flower_process_gets_the_no_phone_home_environment(tmp_path: Path) -> None:
    env = flower_env(tmp_path / "home")
    for key, value in SAFE_ENV.items():
        assert env[key] == value
    assert env["FLWR_HOME"] == str((tmp_path / "home").absolute())


def test_an_inherited_environment_cannot_open_flowers_legacy_grpc_listeners(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With FLWR_INTERNAL_GRPC_CONTROL_API=1 in the operator's environment, flwr 1.41's
    SuperLink also served an unauthenticated gRPC Control API on *:9093 (and a Fleet API on
    *:9092, around the proxy), next to the loopback-only HTTP app (seen with `ss -ltnp`)."""
    from flwr.common.constant import FLWR_INTERNAL_GRPC_CONTROL_API, FLWR_INTERNAL_GRPC_FLEET_API

    for name in (FLWR_INTERNAL_GRPC_CONTROL_API, FLWR_INTERNAL_GRPC_FLEET_API):
        monkeypatch.setenv(name, "1")
        assert flower_env(tmp_path / "home")[name] != "1", name


def test_superlink_flags_are_safe_and_insecure_only_on_loopback(tmp_path: Path) -> None:
    argv = superlink_argv(9100, tmp_path / "db")
    assert "--disable-runtime-dependency-installation" in argv
    assert "--insecure" in argv and ":memory:" not in argv
    with pytest.raises(FlowerProcessError, match="loopback"):
        superlink_argv(9100, tmp_path / "db", host="0.0.0.0")
    with pytest.raises(FlowerProcessError, match="loopback"):
        supernode_argv("10.0.0.5:9100", 9101, {"site-dir": "/x"})


def test_node_config_round_trips_through_flowers_own_parser() -> None:
    from flwr.common.config import parse_config_args

    values: dict[str, str | int | float | bool] = {
        "site-dir": "/a b/c", "allow-train": False, "n": 3, "accept-risk": "ok: it's x"}
    assert parse_config_args([node_config_arg(values)]) == values
    with pytest.raises(FlowerProcessError, match="double quote"):
        node_config_arg({"site-dir": 'a"b'})


def test_run_config_file_carries_json_values(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    from shared.flower_proc import toml_value

    cfg = {"gan-config": '{"kimg": 0.5, "model": "gan"}', "n": 2, "on": True, "x": 1.5}
    path = tmp_path / "rc.toml"
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.items()))
    assert parse_config_args([str(path)]) == cfg


def test_cli_connection_is_insecure_only_on_loopback(tmp_path: Path) -> None:
    from shared.flower_proc import write_connection

    text = write_connection(tmp_path, "fed", "127.0.0.1:9092").read_text()
    assert "insecure = true" in text
    with pytest.raises(FlowerProcessError, match="CA certificate"):
        write_connection(tmp_path, "fed", "coordinator.example.org:9092", insecure=True)
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    text = write_connection(tmp_path, "fed", "coordinator.example.org:9092",
                            root_cert=ca).read_text()
    assert "root-certificates" in text and "insecure" not in text


def test_fab_carries_only_package_code_and_stays_small(tmp_path: Path) -> None:
    import zipfile

    from shared.flower_proc import flwr_cli
    from tests.coordinator.fedutil import REPO

    proc = flwr_cli(["build", "--app", str(REPO)], tmp_path / "home", cwd=tmp_path)
    fabs = list(tmp_path.glob("*.fab"))
    assert len(fabs) == 1, proc.stdout + proc.stderr
    assert fabs[0].stat().st_size < 10 * 1024 * 1024
    names = zipfile.ZipFile(fabs[0]).namelist()
    assert "node/client_app.py" in names and "coordinator/server_app.py" in names
    code = [n for n in names if not n.startswith(".info/") and n != "pyproject.toml"]
    assert all(n.endswith(".py") and n.split("/")[0] in ("node", "coordinator", "shared")
               for n in code), [n for n in code if not n.endswith(".py")]
