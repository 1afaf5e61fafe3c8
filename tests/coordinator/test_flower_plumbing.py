"""A real loopback SuperLink + SuperNodes and one ping round through the repo's Flower app."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import FlowerProcessError
from coordinator.flower_proc import (
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


def test_superlink_flags_are_safe_and_insecure_only_on_loopback(tmp_path: Path) -> None:
    argv = superlink_argv(9100, tmp_path / "db")
    assert "--disable-runtime-dependency-installation" in argv
    assert "--insecure" in argv and ":memory:" not in argv
    with pytest.raises(FlowerProcessError, match="loopback"):
        superlink_argv(9100, tmp_path / "db", host="0.0.0.0")
    with pytest.raises(FlowerProcessError, match="loopback"):
        supernode_argv("10.0.0.5:9100", 9101, {"site-dir": "/x"})


def test_node_config_quotes_strings_and_rejects_spaces() -> None:
    assert node_config_arg({"site-dir": "/a/b", "allow-train": False, "n": 3}) == \
        'site-dir="/a/b" allow-train=false n=3'
    with pytest.raises(FlowerProcessError, match="space"):
        node_config_arg({"site-dir": "/a b"})
