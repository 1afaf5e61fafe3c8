"""Start and stop Flower's own processes with the flags a hospital network needs.

This module configures Flower; it does not replace it. Every process it starts gets:

* ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1`` (nothing phones home);
* its own ``FLWR_HOME`` (Flower keeps installed apps and connection settings there, and the
  on-disk state grows, so two processes must never share one);
* ``--disable-runtime-dependency-installation`` on the SuperLink (run-time ``uv sync`` needs
  the internet; the environment of every party must already hold synthlearn);
* a per-run SuperLink database file, removed when the federation stops (flwr 1.41's
  ``:memory:`` database failed here with "cannot commit transaction - SQL statements in
  progress" as soon as two SuperNodes pulled at once, see benchmarks/results-federation.md);
* its own process group, so stopping it also stops the SuperExec/ClientApp children, and
  only processes this module started are ever signalled.

``--insecure`` exists for loopback only: :func:`start_superlink` refuses it on any address
that is not a loopback address unless TLS files are given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.errors import FlowerProcessError, RunFailedError

SAFE_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
    # flwr 1.41 still starts its legacy gRPC Control API (0.0.0.0:9093, no authentication)
    # and Fleet API (0.0.0.0:9092, around the proxy) when these are "1" in the environment.
    "FLWR_INTERNAL_GRPC_CONTROL_API": "0",
    "FLWR_INTERNAL_GRPC_FLEET_API": "0",
}
"""Set for every Flower process: nothing may contact the internet from a hospital, and
nothing inherited from the caller's environment may open a listener the proxy does not guard."""

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def flower_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for one Flower process: safe flags plus its own ``FLWR_HOME``."""
    env = dict(os.environ)
    env.update(SAFE_ENV)
    env["FLWR_HOME"] = str(Path(home).absolute())
    # Flower starts its own helpers by bare name (the SuperLink runs `flower-superexec`, the
    # SuperExec runs `flwr-serverapp`/`flwr-clientapp`): put this Python's bin folder first,
    # so a service started by full path from a virtual environment that is not on PATH works.
    bin_dir = str(Path(sys.executable).parent)
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *rest])
    Path(home).mkdir(parents=True, exist_ok=True)
    if extra:
        env.update(extra)
    return env


def flower_bin(name: str) -> str:
    """The Flower executable that belongs to *this* Python (not some other one on PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which(name)
    if found is None:
        raise FlowerProcessError(
            f"{name}: not found next to {sys.executable} nor on PATH; install synthlearn's "
            "dependencies (flwr==1.41.*) into this environment"
        )
    return found


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into Ctrl-C, so every ``finally`` that stops Flower runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_flower_on_signals() -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP act like Ctrl-C, and only the first signal counts.

    Why: systemd, SLURM, ``kill`` and container runtimes stop a service with SIGTERM, whose
    default action ends Python at once, skipping the ``finally`` blocks that stop
    flower-superlink, flower-superexec and flower-supernode (they live in sessions of their
    own, so nothing else reaches them) — they would keep the port. A second signal during
    the bounded clean-up is ignored so the clean-up itself is not cut short.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, _frame: object) -> None:
        for sig in caught:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    # An ignored SIGHUP stays ignored: `nohup synthlearn node join … &` must survive the
    # admin logging out, as it did before this handler. (SIGINT/SIGTERM are always handled:
    # a shell script's background job inherits an ignored SIGINT, yet `kill -INT` must stop it.)
    previous = {sig: signal.getsignal(sig) for sig in caught}
    for sig in caught:
        if not (sig == signal.SIGHUP and previous[sig] is signal.SIG_IGN):
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: FlowerProcess | None = None) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FlowerProcessError(
                f"{proc.name} exited with status {proc.poll()} before listening on {host}:{port}; "
                f"see its log {proc.log_path}:\n{proc.tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise FlowerProcessError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def listening_or_stopped(proc: FlowerProcess, host: str, port: int, timeout: float) -> None:
    """Wait until ``proc`` listens; if it does not, or we are interrupted meanwhile (Ctrl-C,
    SIGTERM), stop it before passing the error on — the caller never got a handle to it."""
    try:
        wait_for_port("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, timeout, proc)
    except BaseException:
        proc.stop(grace=3.0)
        raise


@dataclass
class FlowerProcess:
    """One started Flower process, its log file and its process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    home: Path
    port: int | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process, its group and its descendants: what a power cut looks like."""
        tree = descendants(self.popen.pid)
        self._signal(signal.SIGKILL)
        _kill_pids(tree, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._close()

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the process group (and descendants elsewhere), wait, SIGKILL what is left."""
        tree = descendants(self.popen.pid)
        _kill_pids(tree, signal.SIGTERM)
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=5)
        # Children in the group (SuperExec, ClientApp/ServerApp processes) may outlive the
        # leader by a moment: terminate them too and wait until the group is empty.
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill_pids([t for t in tree if _alive(t)], signal.SIGKILL)
        if self._group_alive():
            self._signal(signal.SIGKILL)
            end = time.monotonic() + 5
            while self._group_alive() and time.monotonic() < end:
                time.sleep(0.1)
        self._close()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _signal(self, sig: int) -> None:
        # The group id is the pid of the leader we started (start_new_session=True).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def spawn(name: str, argv: Sequence[str], home: Path, log_path: Path,
          port: int | None = None, cwd: Path | None = None,
          env: Mapping[str, str] | None = None) -> FlowerProcess:
    """Start ``argv`` in its own session with the safe environment, logging to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    try:
        popen = subprocess.Popen(
            list(argv), env=flower_env(home, env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(cwd) if cwd else None,
        )
    except OSError as exc:
        log.close()
        raise FlowerProcessError(f"cannot start {argv[0]}: {exc}") from None
    return FlowerProcess(name=name, popen=popen, log_path=log_path, home=home, port=port,
                         _log=log)


@dataclass(frozen=True)
class TlsFiles:
    """Server-side TLS material for the SuperLink (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def superlink_argv(port: int, database: Path, *, host: str = "127.0.0.1",
                   tls: TlsFiles | None = None, auth: bool = False) -> list[str]:
    """Flags for ``flower-superlink``; ``--insecure`` only without TLS and only on loopback."""
    argv = [flower_bin("flower-superlink"), "--database", str(database),
            "--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if tls is None:
        if host not in LOOPBACK_HOSTS:
            raise FlowerProcessError(
                f"refusing to start a SuperLink without TLS on {host}: --insecure is for "
                "loopback tests only; give --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile "
                "(deploy/make_certs.py makes them)"
            )
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                 "--ssl-keyfile", str(tls.server_key)]
    if auth:
        argv.append("--enable-supernode-auth")
    return argv


def start_superlink(work: Path, port: int | None = None, *, host: str = "127.0.0.1",
                    tls: TlsFiles | None = None, auth: bool = False,
                    timeout: float = 60.0, env: Mapping[str, str] | None = None
                    ) -> FlowerProcess:
    """Start ``flower-superlink`` with a fresh per-run database under ``work``."""
    port = port or free_port()
    home = work / "superlink-home"
    database = work / "superlink.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    proc = spawn("superlink", superlink_argv(port, database, host=host, tls=tls, auth=auth),
                 home, work / "logs" / "superlink.log", port=port, env=env)
    listening_or_stopped(proc, host, port, timeout)
    return proc


def node_config_arg(values: Mapping[str, str | int | float | bool]) -> str:
    """``--node-config`` text: space-separated TOML key=value pairs (strings quoted)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, int | float):
            parts.append(f"{key}={value}")
        else:
            text = str(value)
            if '"' in text or "\\" in text or "\n" in text:
                raise FlowerProcessError(
                    f"node-config value {text!r} for {key} contains a double quote, backslash "
                    "or newline, which Flower's --node-config cannot carry; use a value "
                    "without them"
                )
            parts.append(f'{key}="{text}"')
    return " ".join(parts)


def supernode_argv(superlink: str, port: int, node_config: Mapping[str, Any], *,
                   root_cert: Path | None = None, auth_key: Path | None = None,
                   max_wait: float | None = None,
                   trusted_entities: Path | None = None) -> list[str]:
    """Flags for ``flower-supernode`` (TLS when a root certificate is given)."""
    host = superlink.rsplit(":", 1)[0].strip("[]")
    argv = [flower_bin("flower-supernode"), "--superlink", superlink, "--port", str(port),
            "--node-config", node_config_arg(node_config)]
    if root_cert is None:
        if host not in LOOPBACK_HOSTS:
            raise FlowerProcessError(
                f"refusing to connect to {superlink} without TLS: --insecure is for loopback "
                "only; pass the federation's CA certificate (--root-certificates)"
            )
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(root_cert)]
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key)]
    if max_wait is not None:
        argv += ["--max-wait-time", str(max_wait)]
    if trusted_entities is not None:
        argv += ["--trusted-entities", str(trusted_entities)]
    return argv


def start_supernode(work: Path, name: str, superlink: str, node_config: Mapping[str, Any], *,
                    port: int | None = None, root_cert: Path | None = None,
                    auth_key: Path | None = None, max_wait: float | None = None,
                    timeout: float = 60.0, env: Mapping[str, str] | None = None,
                    trusted_entities: Path | None = None) -> FlowerProcess:
    """Start ``flower-supernode`` with its own ``FLWR_HOME`` and ClientApp API port."""
    port = port or free_port()
    home = work / f"supernode-{name}-home"
    argv = supernode_argv(superlink, port, node_config, root_cert=root_cert, auth_key=auth_key,
                          max_wait=max_wait, trusted_entities=trusted_entities)
    proc = spawn(f"supernode-{name}", argv, home, work / "logs" / f"supernode-{name}.log",
                 port=port, env=env)
    listening_or_stopped(proc, "127.0.0.1", port, timeout)
    return proc


# -- the flwr CLI ----------------------------------------------------------------------------------
def write_connection(home: Path, name: str, address: str, *, root_cert: Path | None = None,
                     insecure: bool | None = None) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection (Flower reads it there).

    Without ``root_cert`` the connection is insecure, which is allowed for loopback only
    (``insecure`` is accepted for symmetry with the CLI flag; it cannot widen that).
    """
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]",
             f'address = "{address}"']
    if root_cert is not None:
        lines.append(f'root-certificates = "{Path(root_cert).absolute()}"')
    else:
        host = address.rsplit(":", 1)[0].strip("[]")
        if host not in LOOPBACK_HOSTS:
            raise FlowerProcessError(
                f"a connection to {address} needs the federation's CA certificate "
                "(--root-cert ca.crt); --insecure is for loopback only"
            )
        lines.append("insecure = true")
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def flwr_cli(args: Sequence[str], home: Path, timeout: float = 120.0,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one ``flwr`` CLI command with the safe environment and its own home."""
    try:
        return subprocess.run([flower_bin("flwr"), *args], env=flower_env(home), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise FlowerProcessError(f"`flwr {' '.join(args)}` did not return within "
                                 f"{timeout:.0f} s") from None


def _json_out(proc: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    text = proc.stdout.strip()
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise FlowerProcessError(f"{what}: no JSON answer (exit {proc.returncode}):\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    if doc.get("success") is False:
        raise FlowerProcessError(f"{what} failed: {doc.get('error-message') or doc}")
    return doc


def toml_value(value: Any) -> str:
    """One run-config value in TOML syntax (for ``flwr run --run-config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def flwr_run(app_dir: Path, connection: str, home: Path,
             run_config: Mapping[str, Any] | None = None) -> int:
    """Submit the app with ``flwr run``; return the run id (the run itself goes on)."""
    args = ["run", str(app_dir), connection, "--format", "json"]
    if run_config:
        # A TOML file, not key=value text: Flower's key=value parser cannot carry a value
        # that itself contains quotes (e.g. the JSON of gan-config).
        path = Path(home) / f"run-config-{time.time_ns()}.toml"
        path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()),
                        encoding="utf-8")
        args += ["--run-config", str(path)]
    doc = _json_out(flwr_cli(args, home, timeout=300), "flwr run")
    try:
        return int(doc["run-id"])
    except (KeyError, ValueError):
        raise FlowerProcessError(f"flwr run: answer has no run id: {doc}") from None


def run_status(connection: str, home: Path, run_id: int) -> dict[str, Any]:
    """The run's row from ``flwr ls --format json`` (status, details, traffic, times)."""
    doc = _json_out(flwr_cli(["ls", connection, "--run-id", str(run_id), "--format", "json"],
                             home, timeout=60), "flwr ls")
    for row in doc.get("runs", []):
        if str(row.get("run-id")) == str(run_id):
            return dict(row)
    raise FlowerProcessError(f"flwr ls does not list run {run_id}")


def wait_for_run(connection: str, home: Path, run_id: int, timeout: float,
                 poll: float = 3.0, on_poll: Any = None) -> dict[str, Any]:
    """Poll ``flwr ls`` until the run finishes; raise unless it is ``finished:completed``.

    Why: ``flwr run`` exits 0 even when the ServerApp later fails, so the run's final status
    is the only trustworthy answer.
    """
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = run_status(connection, home, run_id)
        if on_poll is not None:
            on_poll(row)
        status = str(row.get("status", ""))
        if status.startswith("finished"):
            if status != "finished:completed":
                raise RunFailedError(
                    f"Flower run {run_id} ended as {status} ({row.get('status-details')}); "
                    f"see `flwr log {run_id} {connection} --show` (FLWR_HOME={home})"
                )
            return row
        time.sleep(poll)
    raise RunFailedError(f"Flower run {run_id} did not finish within {timeout:.0f} s "
                         f"(last status {row.get('status')}); stop it with "
                         f"`flwr stop {run_id} {connection}`")


def run_log(connection: str, home: Path, run_id: int) -> str:
    """The ServerApp's log for a run (``flwr log --show``)."""
    proc = flwr_cli(["log", str(run_id), connection, "--show"], home, timeout=60)
    return proc.stdout + proc.stderr


def register_supernode(public_key: Path, connection: str, home: Path) -> str:
    """``flwr supernode register KEY.pub CONN``; returns Flower's answer (node id)."""
    proc = flwr_cli(["supernode", "register", str(public_key), connection, "--format", "json"],
                    home, timeout=60)
    doc = _json_out(proc, f"flwr supernode register {public_key}")
    return str(doc.get("node-id", doc))


# -- a whole loopback federation -------------------------------------------------------------------
@dataclass
class Federation:
    """A SuperLink plus SuperNodes started by us; :meth:`stop` ends every one of them."""

    work: Path
    superlink: FlowerProcess
    supernodes: dict[str, FlowerProcess]
    connection: str
    cli_home: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.superlink.port}"

    @property
    def database(self) -> Path:
        """The SuperLink's database (where the operator's app signature is stored)."""
        return self.work / "superlink.db"

    def processes(self) -> list[FlowerProcess]:
        return [*self.supernodes.values(), self.superlink]

    def stop(self) -> None:
        stop_all(self.processes())

    def connected_nodes(self) -> int:
        """How many SuperNodes the SuperLink has activated (from its log)."""
        return self.superlink.log_text().count("[Fleet.ActivateNode] Activated")


@contextlib.contextmanager
def loopback_federation(work: Path, sites: Mapping[str, Mapping[str, Any]],
                        *, connect_timeout: float = 90.0,
                        trusted_entities: Path | None = None) -> Iterator[Federation]:
    """SuperLink + one SuperNode per site on 127.0.0.1, each with its own port and home.

    ``sites`` maps a site name to its ``--node-config`` values; with ``trusted_entities``
    every SuperNode runs only apps signed by a key listed there. Every process is stopped on
    exit, including on Ctrl-C, SIGTERM or an exception.
    """
    work.mkdir(parents=True, exist_ok=True)
    started: list[FlowerProcess] = []
    signals = contextlib.ExitStack()
    signals.enter_context(stop_flower_on_signals())
    # All parties share this machine's cores: one math thread each, or PyTorch's OpenMP
    # threads spin against each other (a 2-epoch CNN went from 9 s to 72 s on 2 loaded cores).
    threads = str(max(1, (os.cpu_count() or 1) // (len(sites) + 1)))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    # The SuperLink starts the ServerApp, whose one heavy step (the pooled CNN) runs while
    # every site waits for its weights: it gets all the cores (1 thread: 9.8-14 s per epoch
    # of the demo's pool, 2 threads: 6.2-6.9 s, BENCHMARKS.md § Candidates chosen at the site).
    everything = str(os.cpu_count() or 1)
    try:
        link = start_superlink(work, env={"OMP_NUM_THREADS": everything,
                                          "MKL_NUM_THREADS": everything})
        started.append(link)
        address = f"127.0.0.1:{link.port}"
        nodes: dict[str, FlowerProcess] = {}
        for name, cfg in sites.items():
            proc = start_supernode(work, name, address, cfg, env=env,
                                   trusted_entities=trusted_entities)
            started.append(proc)
            nodes[name] = proc
        cli_home = work / "cli-home"
        write_connection(cli_home, "synthlearn", address)
        fed = Federation(work=work, superlink=link, supernodes=nodes, connection="synthlearn",
                         cli_home=cli_home)
        deadline = time.monotonic() + connect_timeout
        while fed.connected_nodes() < len(nodes):
            if time.monotonic() > deadline:
                raise FlowerProcessError(
                    f"only {fed.connected_nodes()} of {len(nodes)} SuperNodes connected within "
                    f"{connect_timeout:.0f} s; see the logs in {work / 'logs'}")
            for proc in started:
                if not proc.alive():
                    raise FlowerProcessError(f"{proc.name} exited early; see {proc.log_path}:\n"
                                             f"{proc.tail()}")
            time.sleep(0.3)
        yield fed
    finally:
        stop_all(list(reversed(started)))
        signals.close()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; empty where /proc is unavailable).

    Why: Flower's SuperExec starts the ServerApp/ClientApp processes in sessions of their
    own, so signalling our process groups does not reach them.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_all(procs: Sequence[FlowerProcess], grace: float = 8.0) -> None:
    """SIGTERM every process we started and everything below it at once, wait, SIGKILL the
    rest.

    Stopping one by one cost ~8 s per process on a loaded machine; in parallel the whole
    federation stops in about the time of its slowest member.
    """
    tree = [pid for proc in procs for pid in descendants(proc.pid)]
    for proc in procs:
        proc._signal(signal.SIGTERM)
    _kill_pids(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for proc in procs:
            proc.poll()  # reap an exited leader, or its zombie keeps the group "alive"
        if not (any(p._group_alive() for p in procs) or any(_alive(t) for t in tree)):
            break
        time.sleep(0.1)
    _kill_pids([t for t in tree if _alive(t)], signal.SIGKILL)
    for proc in procs:
        proc.stop(grace=0.5)
