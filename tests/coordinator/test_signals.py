"""SIGTERM (systemd, SLURM, kill, containers) and SIGINT (Ctrl-C) to `coordinator serve`,
`node join` and `synthlearn demo` leave no Flower process and free the port.

Every command is started by the full path of this virtual environment's `synthlearn` with a
PATH that does not contain the environment, as a service unit would start it: Flower's own
helpers (flower-superexec, flwr-serverapp, ...) must still be found.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.certs import make_ca_and_server
from shared.flower_proc import _alive, descendants, free_port, start_superlink, stop_all
from tests.coordinator.fedutil import nginx_or_skip

pytestmark = [pytest.mark.flower]

SYNTHLEARN = Path(sys.executable).parent / "synthlearn"
BARE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = BARE_PATH
    assert str(SYNTHLEARN.parent) not in env["PATH"]
    return subprocess.Popen([str(SYNTHLEARN), *args], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=log.parent)


def _wait_for(proc: subprocess.Popen[bytes], names: tuple[str, ...], log: Path,
              timeout: float = 150.0) -> list[int]:
    """Wait until a Flower process with each name runs below ``proc``; return all of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        flower = [p for p in descendants(proc.pid)
                  if any(n in _cmdline(p) for n in ("flower-", "flwr-", "nginx"))]
        if all(any(n in _cmdline(p) for p in flower) for n in names):
            return flower
        time.sleep(0.3)
    pytest.fail(f"{names} did not start within {timeout:.0f} s:\n"
                f"{log.read_text(errors='replace')[-3000:]}")


def _signal_and_check(proc: subprocess.Popen[bytes], flower: list[int], sig: int,
                      ports: list[int], log: Path) -> None:
    flower = sorted({*flower, *(p for p in descendants(proc.pid)
                                if any(n in _cmdline(p) for n in ("flower-", "flwr-", "nginx")))})
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"did not exit within 60 s of {signal.Signals(sig).name}")
    assert rc == 128 + sig, log.read_text(errors="replace")[-2000:]
    left = [f"{p}: {_cmdline(p)}" for p in flower if _alive(p)]
    assert not left, f"Flower processes left after {signal.Signals(sig).name}: {left}"
    for port in ports:
        assert not _listening(port), f"port {port} still open"


@pytest.fixture
def cleanup() -> Iterator[Callable[[subprocess.Popen[bytes]], None]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs.append
    for proc in procs:  # only if a test failed half-way: nothing of ours may outlive it
        tree = descendants(proc.pid)
        if proc.poll() is None:
            proc.kill()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


SIGNALS = [signal.SIGTERM, signal.SIGINT]


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGTERM", "SIGINT"])
def test_coordinator_serve_stops_superlink_superexec_and_proxy(
        sig: int, tmp_path: Path, cleanup: Callable[[subprocess.Popen[bytes]], None]) -> None:
    nginx_or_skip()
    make_ca_and_server(tmp_path / "certs")
    public, control = free_port(), free_port()
    log = tmp_path / "serve.log"
    proc = _start(["coordinator", "serve", "--work", str(tmp_path / "work"), "--host",
                   "127.0.0.1", "--port", str(public), "--control-port", str(control),
                   "--tls-dir", str(tmp_path / "certs")], log)
    cleanup(proc)
    flower = _wait_for(proc, ("flower-superlink", "flower-superexec", "nginx"), log)
    _signal_and_check(proc, flower, sig, [public, control], log)


@pytest.fixture(scope="module")
def loopback_superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    link = start_superlink(tmp_path_factory.mktemp("link"))
    yield int(link.port or 0)
    stop_all([link])


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGTERM", "SIGINT"])
def test_node_join_stops_its_supernode(sig: int, tmp_path: Path, loopback_superlink: int,
                                       cleanup: Callable[[subprocess.Popen[bytes]], None]
                                       ) -> None:
    from shared.flower_keys import make_app_signing_key

    site = tmp_path / "site"
    (site / "keys").mkdir(parents=True)
    (site / "site.json").write_text("{}")
    (site / "keys" / "site.key").write_text("placeholder: join only checks it exists")
    _, app_pub = make_app_signing_key(tmp_path / "operator")
    port = free_port()
    log = tmp_path / "join.log"
    proc = _start(["node", "join", "--superlink", f"127.0.0.1:{loopback_superlink}",
                   "--insecure", "--site-dir", str(site), "--app-key", str(app_pub),
                   "--port", str(port)], log)
    cleanup(proc)
    flower = _wait_for(proc, ("flower-supernode",), log)
    deadline = time.monotonic() + 30
    while not _listening(port) and time.monotonic() < deadline:
        time.sleep(0.3)
    _signal_and_check(proc, flower, sig, [port], log)


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGTERM", "SIGINT"])
def test_demo_stops_its_whole_federation(sig: int, tmp_path: Path,
                                         cleanup: Callable[[subprocess.Popen[bytes]], None]
                                         ) -> None:
    log = tmp_path / "demo.log"
    proc = _start(["demo", "--out", str(tmp_path / "demo"), "--sites", "1", "--scale", "0.1",
                   "--gan-minutes", "0.2", "--n-synthetic", "20", "--cnn-minutes", "0.1"],
                  log)
    cleanup(proc)
    flower = _wait_for(proc, ("flower-superlink", "flower-superexec", "flower-supernode"), log)
    _signal_and_check(proc, flower, sig, [], log)


def test_sighup_ignored_by_nohup_stays_ignored() -> None:
    """`nohup synthlearn node join … &` ignores SIGHUP; the stop-on-signal handler replaced
    that, so the SuperNode stopped when the admin logged out."""
    from shared.flower_proc import Interrupted, stop_flower_on_signals

    sig = signal.SIGHUP
    old = signal.signal(sig, signal.SIG_IGN)
    try:
        with stop_flower_on_signals():
            try:
                os.kill(os.getpid(), sig)
                time.sleep(0.2)
            except Interrupted:
                pytest.fail(f"{signal.Signals(sig).name} was ignored by the parent, "
                            "but stopped the command")
        assert signal.getsignal(sig) is signal.SIG_IGN
    finally:
        signal.signal(sig, old)
