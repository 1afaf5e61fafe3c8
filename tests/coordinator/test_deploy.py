"""deploy/: the compose file parses, and every `synthlearn …` command line in it, the
Dockerfiles, the SLURM example, deploy/README.md and the root README is accepted by the real
CLI (Docker itself cannot run on the development machines; deploy/README.md says what was not
exercised)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from shared.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_has_superlink_three_supernodes_and_coordinator() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"superlink", "site-a", "site-b", "site-c", "coordinator", "register"} <= set(services)
    assert "--tls-dir" in services["superlink"]["command"]
    for site in ("site-a", "site-b", "site-c"):
        cmd = services[site]["command"]
        assert "--root-cert" in cmd and "--auth-key" in cmd and "--insecure" not in cmd
        assert "--app-key" in cmd  # the SuperNode runs only apps the operator signed
        # ...and holds no coordinator secret (ca.key, server.key, app-signing): the
        # `certs` volume has them, a site mounts only the public halves.
        assert not any(str(v).startswith("certs:") for v in services[site]["volumes"])
    assert "cp /certs/ca.crt /certs/app-signing.pub /public/" in " ".join(
        services["certs"]["entrypoint"])
    # The Control API answers on the superlink container's loopback only: whoever uses it
    # shares that container's network namespace.
    for svc in ("register", "coordinator"):
        assert services[svc]["network_mode"] == "service:superlink"
        assert any("127.0.0.1:9093" in str(w) for w in
                   services[svc].get("command", []) + services[svc].get("entrypoint", []))
    for svc in services.values():
        env = svc.get("environment", {})
        if env:
            assert env["FLWR_TELEMETRY_ENABLED"] == "0"


def _command_lines() -> list[tuple[str, list[str]]]:
    """(source, argv after `synthlearn`) for every synthlearn invocation in deploy/."""
    out: list[tuple[str, list[str]]] = []
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        if "command" in svc:
            out.append((f"compose:{name}", list(svc["command"])))
    for docker in ("Dockerfile.node", "Dockerfile.coordinator"):
        text = (DEPLOY / docker).read_text().replace("\\\n", " ")
        m = re.search(r"^CMD (\[.*\])", text, re.M)
        assert m, docker
        out.append((docker, json.loads(m.group(1))))
    for doc in (DEPLOY / "README.md", DEPLOY / "slurm" / "node-train.sbatch",
                DEPLOY.parent / "README.md"):
        text = doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            for m in re.finditer(r"synthlearn ((?:node|coordinator|audit) [^`]*)", line):
                argv = shlex.split(m.group(1).split("|")[0], comments=True)
                if "…" not in argv:  # "synthlearn node …" names a sub-app in prose
                    out.append((doc.relative_to(DEPLOY.parent).as_posix(), argv))
    return out


COMMANDS = _command_lines()


@pytest.mark.parametrize("source, argv", COMMANDS, ids=[f"{s}:{' '.join(a[:2])}"
                                                        for s, a in COMMANDS])
def test_every_documented_command_parses(source: str, argv: list[str]) -> None:
    import click
    import typer.main

    words = [w for w in argv if not w.startswith("$") and "$(" not in w]
    node = typer.main.get_command(app)
    ctx = click.Context(node)
    i = 0
    while isinstance(node, click.Group) and i < len(words):
        nxt = node.get_command(ctx, words[i])
        if nxt is None:
            pytest.fail(f"{source}: `synthlearn {' '.join(words[:i + 1])}` is not a command")
        node, i = nxt, i + 1
    params = {opt for p in node.params for opt in p.opts + p.secondary_opts}
    for w in words[i:]:
        if w.startswith("--"):
            assert w.split("=")[0] in params, f"{source}: {w} is not an option of {words[:i]}"


def test_cli_runner_accepts_a_documented_help() -> None:
    res = CliRunner().invoke(app, ["node", "join", "--help"])
    assert res.exit_code == 0 and "--root-cert" in res.output


@pytest.mark.parametrize("argv, reason", [
    (["coordinator", "serve", "--insecure", "--host", "10.0.0.5"], "loopback tests only"),
    (["coordinator", "run", "--trust", "keys", "--root-cert", "ca.crt"], "--app-key"),
    (["node", "join", "--superlink", "h:9092", "--site-dir", "s", "--root-cert", "ca.crt"],
     "--app-key"),
])
def test_unsafe_deployments_are_refused_before_anything_starts(argv: list[str], reason: str,
                                                               tmp_path: Path) -> None:
    """No public SuperLink without TLS and the proxy; no run without the operator's
    signature; no SuperNode that would run unsigned apps."""
    res = CliRunner().invoke(app, [*argv, *(["--work", str(tmp_path)] if argv[0] ==
                                            "coordinator" else [])])
    assert res.exit_code != 0
    assert reason in str(res.exception), res.output
    assert not (tmp_path / "superlink.db").exists()


@pytest.mark.parametrize("mistake", ["public-half", "no-database", "readable-by-others"])
def test_a_signing_mistake_is_refused_before_the_run_is_submitted(
        mistake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passing app-signing.pub (the half sites get) or a wrong --superlink-db was found only
    after `flwr run`: an unsigned run was left on the SuperLink, waiting for sites that
    refuse it, and the operator saw an error about a run that was nonetheless running."""
    from shared.flower_keys import make_app_signing_key

    priv, pub = make_app_signing_key(tmp_path / "certs")
    database = tmp_path / "superlink.db"
    if mistake != "no-database":
        database.write_bytes(b"")
    submitted: list[object] = []
    monkeypatch.setattr("coordinator.launch.flwr_run", lambda *a, **k: submitted.append(a))
    key = pub if mistake == "public-half" else priv
    if mistake == "readable-by-others":
        priv.chmod(0o644)
    res = CliRunner().invoke(app, ["coordinator", "run", "--insecure", "--trust",
                                   str(tmp_path / "trust"), "--app-key", str(key),
                                   "--superlink-db", str(database),
                                   "--work", str(tmp_path / "work")])
    assert res.exit_code != 0
    expected = {"public-half": "not an OpenSSH private key",
                "no-database": "no SuperLink database",
                "readable-by-others": "readable by other users"}[mistake]
    assert expected in str(res.exception), res.output
    assert submitted == []
