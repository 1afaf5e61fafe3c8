"""The Fleet proxy's filter under raw HTTP tricks, against a recording upstream (no Flower
needed): only an exact Fleet path with POST may reach 127.0.0.1, framed by nginx itself."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.certs import make_ca_and_server
from coordinator.fleet_proxy import start_fleet_proxy
from shared.flower_proc import TlsFiles, free_port

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and
                                not Path("/usr/sbin/nginx").exists(), reason="needs nginx")

ALLOWED = "/v1/fleet/pull-messages"
H = b"Host: x\r\nContent-Length: 0\r\n\r\n"
HOSTILE = {
    "absolute-form control": b"POST https://x/v1/control/start-run HTTP/1.1\r\n" + H,
    "path parameter": b"POST " + ALLOWED.encode() + b";/../../control/start-run HTTP/1.1\r\n" + H,
    "upper case": b"POST /V1/FLEET/PULL-MESSAGES HTTP/1.1\r\n" + H,
    "double slash": b"POST /" + ALLOWED.encode() + b" HTTP/1.1\r\n" + H,
    "backslash": b"POST " + ALLOWED.encode() + b"\\..\\control HTTP/1.1\r\n" + H,
    "percent-encoded": b"POST /v1/fleet/pull%2Dmessages HTTP/1.1\r\n" + H,
    "unicode hyphen": "POST /v1/fleet/pull\u2010messages HTTP/1.1\r\n".encode() + H,
    "CL+TE smuggling": b"POST " + ALLOWED.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
                       b"48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /v1/control/"
                       b"start-run HTTP/1.1\r\nHost: x\r\n\r\n",
    "h2 prior knowledge": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "lower-case method": b"post " + ALLOWED.encode() + b" HTTP/1.1\r\n" + H,
    "GET": b"GET " + ALLOWED.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


class Upstream:
    """A TLS server on loopback that records the head of every request it receives."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.heads: list[bytes] = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
                tls.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.heads.append(data.split(b"\r\n\r\n")[0])
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                tls.close()
            except (OSError, ssl.SSLError):
                conn.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Upstream]]:
    root = tmp_path_factory.mktemp("proxy")
    paths = make_ca_and_server(root / "certs")
    upstream = Upstream(paths["server_cert"], paths["server_key"])
    public = free_port()
    proc = start_fleet_proxy(root / "work", "127.0.0.1", public, upstream.port,
                             TlsFiles(paths["ca_cert"], paths["server_cert"],
                                      paths["server_key"]))
    try:
        yield public, paths["ca_cert"], upstream
    finally:
        proc.stop()
        upstream.sock.close()


def _send(port: int, ca: Path, request: bytes, alpn: list[str] | None = None
          ) -> tuple[str | None, list[int]]:
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                         server_hostname="localhost") as conn:
        conn.sendall(request)
        conn.settimeout(0.7)  # nginx keeps the connection open; its answers come at once
        out = b""
        try:
            while chunk := conn.recv(65536):
                out += chunk
        except (TimeoutError, ssl.SSLError):
            pass
        statuses = [int(line.split(b" ")[1]) for line in out.split(b"\r\n")
                    if line.startswith(b"HTTP/1.")]
        return conn.selected_alpn_protocol(), statuses


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_request_never_reaches_the_superlink(name: str,
                                                     proxy: tuple[int, Path, Upstream]) -> None:
    port, ca, upstream = proxy
    before = len(upstream.heads)
    _, statuses = _send(port, ca, HOSTILE[name])
    time.sleep(0.2)
    assert statuses and statuses[0] in (400, 403, 405), (name, statuses)
    assert upstream.heads[before:] == [], name


def test_fleet_call_is_forwarded_as_sent_and_without_upgrade(
        proxy: tuple[int, Path, Upstream]) -> None:
    """Absolute form keeps only its path; Upgrade (websocket, h2c) is not passed on; ALPN
    offers no HTTP/2; a pipelined Control call after a Fleet call is filtered on its own."""
    port, ca, upstream = proxy
    before = len(upstream.heads)
    alpn, statuses = _send(port, ca, b"POST https://evil:1" + ALLOWED.encode() +
                           b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                           b"\r\nContent-Length: 0\r\n\r\nPOST /v1/control/start-run HTTP/1.1"
                           b"\r\n" + H, alpn=["h2", "http/1.1"])
    time.sleep(0.2)
    assert alpn == "http/1.1" and statuses[0] == 200
    heads = upstream.heads[before:]
    assert len(heads) == 1, heads
    assert heads[0].startswith(b"POST " + ALLOWED.encode() + b" HTTP/1.1\r\n")
    assert b"upgrade" not in heads[0].lower() and b"/v1/control" not in heads[0]
