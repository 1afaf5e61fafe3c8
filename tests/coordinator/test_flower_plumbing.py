"""A real loopback SuperLink + SuperNodes and one ping round through the repo's Flower app."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.errors import FlowerProcessError
from coordinator.flower_proc import (
    SAFE_ENV,
    flower_env,
    loopback_federation,
    node_config_arg,
    superlink_argv,
    supernode_argv,
)
from tests.coordinator.fedutil import make_keyed_site, read_json, run_app, trust_folder


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


@pytest.mark.flower
def test_ping_round_trip_through_real_superlink_and_supernodes(tmp_path: Path) -> None:
    sites = {name: make_keyed_site(tmp_path / "sites", name, n=16, size=16, seed=i)
             for i, name in enumerate(("site-a", "site-b"))}
    trust = trust_folder(tmp_path, sites)
    work = tmp_path / "coord"
    node_cfg = {name: {"site-dir": str(p)} for name, p in sites.items()}
    with loopback_federation(tmp_path / "flower", node_cfg) as fed:
        pids = [p.pid for p in fed.processes()]
        row = run_app(fed, {"work-dir": str(work), "trust-dir": str(trust),
                            "expected-sites": 2, "stop-after": "ping", "node-wait-s": 30.0})
        assert row["status"] == "finished:completed"
    answered = read_json(work / "ping.json")
    assert sorted(answered.values()) == ["site-a", "site-b"]
    # Every process we started is gone (its whole group, SuperExec children included).
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
