"""The coordinator's network surface, attacked from the network, on loopback.

One real deployment per module (TLS SuperLink on 127.0.0.1 with SuperNode auth, the nginx
Fleet proxy as the only "public" port, one registered SuperNode that trusts only the
operator's app key, one unregistered SuperNode) and every hostile case against it:

* a Control or runtime call to the public port, with the federation's ca.crt, is refused
  (the same call on loopback works, so it is the proxy that refuses);
* an unsigned app, and an app signed by another key, do not run at the site; the operator's
  signed app does;
* an unregistered SuperNode is refused.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.app_signing import attach_signature, build_fab
from coordinator.certs import make_ca_and_server
from coordinator.fleet_proxy import fleet_paths, start_fleet_proxy
from shared.app_signing import write_trusted_entities
from shared.flower_keys import make_app_signing_key, make_supernode_key
from shared.flower_proc import (
    FlowerProcess,
    TlsFiles,
    flwr_cli,
    flwr_run,
    free_port,
    register_supernode,
    start_superlink,
    start_supernode,
    stop_all,
    wait_for_run,
    write_connection,
)
from tests.coordinator.fedutil import nginx_or_skip, start_refused_supernode

pytestmark = [pytest.mark.flower]

PROBE_APP = Path(__file__).parent / "probe_app"


@dataclass
class Deployment:
    root: Path
    ca: Path
    link: FlowerProcess
    proxy: FlowerProcess
    site: FlowerProcess
    intruder: FlowerProcess | None
    public: str
    loop_home: Path
    public_home: Path
    app_key: Path
    other_key: Path
    markers: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    nginx_or_skip()
    root = tmp_path_factory.mktemp("surface")
    paths = make_ca_and_server(root / "certs", ["coordinator.example.org"])
    tls = TlsFiles(paths["ca_cert"], paths["server_cert"], paths["server_key"])
    app_key, app_pub = make_app_signing_key(root / "certs")
    other_key, _ = make_app_signing_key(root / "elsewhere", "not-the-operator")
    site_key, site_pub = make_supernode_key(root / "site-a" / "keys", "supernode")
    intruder_key, _ = make_supernode_key(root / "intruder" / "keys", "supernode")
    trusted = write_trusted_entities(app_pub, root / "site-a" / "trusted-entities.yaml")
    markers = root / "site-a" / "ran"
    started: list[FlowerProcess] = []
    try:
        link = start_superlink(root / "link", tls=tls, auth=True)
        started.append(link)
        public_port = free_port()
        proxy = start_fleet_proxy(root / "proxy", "127.0.0.1", public_port, int(link.port or 0),
                                  tls)
        started.append(proxy)
        public = f"127.0.0.1:{public_port}"
        loop_home, public_home = root / "cli-loop", root / "cli-public"
        write_connection(loop_home, "loop", f"127.0.0.1:{link.port}", root_cert=paths["ca_cert"])
        write_connection(public_home, "public", public, root_cert=paths["ca_cert"])
        register_supernode(site_pub, "loop", loop_home)
        site = start_supernode(root / "nodes", "site-a", public, {"marker-dir": str(markers)},
                               root_cert=paths["ca_cert"], auth_key=site_key,
                               trusted_entities=trusted)
        started.append(site)
        intruder = start_refused_supernode(root / "nodes", "intruder", public,
                                           {"marker-dir": str(root / "intruder" / "ran")},
                                           root_cert=paths["ca_cert"], auth_key=intruder_key,
                                           max_wait=15)
        if intruder is not None:
            started.append(intruder)
        deadline = time.monotonic() + 60
        while "SuperNode ID" not in site.log_text() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "SuperNode ID" in site.log_text(), site.tail()
        yield Deployment(root, paths["ca_cert"], link, proxy, site, intruder, public,
                         loop_home, public_home, app_key, other_key, markers)
    finally:
        stop_all(list(reversed(started)))


def _json(proc_stdout: str) -> dict[str, object]:
    doc = json.loads(proc_stdout[proc_stdout.find("{"):])
    assert isinstance(doc, dict)
    return doc


def test_control_calls_to_the_public_port_are_refused(deployment: Deployment) -> None:
    d = deployment
    assert _json(flwr_cli(["ls", "loop", "--format", "json"], d.loop_home).stdout)["success"]
    hostile = [
        ["ls", "public", "--format", "json"],
        ["run", str(PROBE_APP), "public", "--format", "json"],
        ["supernode", "register", str(d.root / "intruder" / "keys" / "supernode.pub"),
         "public", "--format", "json"],
        ["supernode", "list", "public", "--format", "json"],
    ]
    for args in hostile:
        doc = _json(flwr_cli(args, d.public_home).stdout)
        assert doc["success"] is False, args
        assert "403" in str(doc["error-message"]), (args, doc)
    # Raw HTTPS, as a hand-written client would try it: Control, runtime, docs, dot segments,
    # escapes, a query string and a non-POST Fleet call are all answered 403 by nginx.
    ctx = ssl.create_default_context(cafile=str(d.ca))
    probes = [("POST", "/v1/control/start-run"), ("POST", "/v1/control/register-node"),
              ("POST", "/v1/runtime/pull-task-input"), ("GET", "/docs"), ("GET", "/health"),
              ("POST", "/v1/fleet/../control/start-run"),
              ("POST", "/v1/fleet/%2e%2e/control/start-run"),
              ("POST", "/v1/fleet//../control/list-runs"),
              ("POST", "/v1/fleet/pull-messages?x=1"), ("GET", "/v1/fleet/get-fab")]
    for method, path in probes:
        req = urllib.request.Request(f"https://{d.public}{path}", data=b"" if method == "POST"
                                     else None, method=method,
                                     headers={"Content-Type": "application/protobuf"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, context=ctx, timeout=10)
        assert err.value.code == 403, (method, path, err.value.code)
    assert all(p.startswith("/v1/fleet/") for p in fleet_paths())


def _submit(d: Deployment, label: str, key: Path | None) -> None:
    fab = build_fab(PROBE_APP)
    run_id = flwr_run(PROBE_APP, "loop", d.loop_home, {"label": label})
    if key is not None:
        attach_signature(d.root / "link" / "superlink.db", fab, key)
    wait_for_run("loop", d.loop_home, run_id, timeout=120, poll=1.0)


def test_only_the_operators_signed_app_runs_at_the_site(deployment: Deployment) -> None:
    d = deployment
    _submit(d, "unsigned", None)
    _submit(d, "other-key", d.other_key)
    _submit(d, "signed", d.app_key)
    ran = sorted(p.name for p in d.markers.iterdir()) if d.markers.exists() else []
    assert ran == ["signed"], d.site.tail(40)
    log = d.site.log_text()
    assert "App verification is not supported by the connected SuperLink" in log  # unsigned
    assert "FAB verification failed" in log  # signed by another key


def test_an_unregistered_supernode_is_refused(deployment: Deployment) -> None:
    d = deployment
    if d.intruder is not None:  # else it was refused before its own port was even up
        deadline = time.monotonic() + 40
        while d.intruder.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "SuperNode ID" not in d.intruder.log_text()
    assert d.link.log_text().count("[Fleet.ActivateNode] Activated") == 1
    assert not (d.root / "intruder" / "ran").exists()
