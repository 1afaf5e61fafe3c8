"""The federation's only public port: an nginx TLS proxy that forwards Flower's Fleet API alone.

Why a proxy: flwr 1.41 serves the Fleet API (what SuperNodes call), the Control API (start a
run, register or unregister SuperNodes; authenticated by a no-op plugin in open-source Flower)
and the runtime APIs (what the ServerApp uses) from one HTTP app on one port. Whoever reaches
that port with the federation's ``ca.crt`` — every site holds it — could submit an app that
would run at every hospital. The SuperLink therefore listens on 127.0.0.1 only, and this proxy
is the one listener on the network. It forwards a request only when

* the raw request line is exactly one of the Fleet API's paths (no query string, no escapes,
  no dot segments: ``$request_uri`` is matched before nginx normalises anything), and
* the method is POST (the Fleet API has no other);

everything else gets 403 without reaching Flower. The path list is read from Flower's own
Fleet router, so a Control or runtime route can never be on it.

The route Flower itself suggests — ``--fleet-api-type grpc-rere --fleet-api-address`` — was
measured and rejected (deploy/README.md, "Why a proxy"): in 1.41 those flags only print a
deprecation warning; no separate Fleet listener opens, and the SuperNode speaks HTTP only.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from shared.errors import FlowerProcessError
from shared.flower_proc import FlowerProcess, TlsFiles, listening_or_stopped, spawn

MAX_BODY = "512m"
"""Largest request nginx forwards; Flower's own message cap (GRPC_MAX_MESSAGE_LENGTH) is 512 MiB."""

UPSTREAM_NAME = "localhost"
"""Name checked on the SuperLink's certificate (make_certs always puts localhost in it)."""


def fleet_paths() -> list[str]:
    """The Fleet API's paths, from Flower's own router (nothing else may be forwarded)."""
    from flwr.superlink.routers.fleet.router import router

    paths = sorted({route.path for route in router.routes})  # type: ignore[attr-defined]
    if not paths or not all(p.startswith("/v1/fleet/") for p in paths):
        raise FlowerProcessError(f"unexpected Fleet API routes in this flwr: {paths}")
    return paths


def nginx_binary() -> str:
    """nginx from the system (Debian: ``apt-get install -y nginx``), or a clear error."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FlowerProcessError(
        "nginx not found: the coordinator's public port is an nginx proxy that forwards only "
        "the Fleet API (flwr 1.41 serves its Control API on the same port). Install it "
        "(Debian/Ubuntu: apt-get install -y nginx) or bind the SuperLink to 127.0.0.1 with "
        "--insecure for a loopback test")


def render_nginx_conf(listen_host: str, listen_port: int, superlink_port: int, tls: TlsFiles,
                      work: Path, paths: Sequence[str] | None = None) -> str:
    """A complete nginx.conf for the proxy (runs in the foreground, files under ``work``)."""
    paths = list(paths) if paths is not None else fleet_paths()
    work = work.absolute()
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    allowed = "\n".join(f'        "{p}" 1;' for p in paths)
    tmp = work / "nginx-tmp"
    return f"""# Made by synthlearn (coordinator/fleet_proxy.py); see deploy/README.md
worker_processes 1;
daemon off;
pid {work / 'fleet-proxy.pid'};
error_log {work / 'logs' / 'fleet-proxy-error.log'} warn;
events {{ worker_connections 512; }}
http {{
    access_log {work / 'logs' / 'fleet-proxy-access.log'};
    server_tokens off;
    client_body_temp_path {tmp / 'body'};
    proxy_temp_path {tmp / 'proxy'};
    fastcgi_temp_path {tmp / 'fastcgi'};
    uwsgi_temp_path {tmp / 'uwsgi'};
    scgi_temp_path {tmp / 'scgi'};
    client_max_body_size {MAX_BODY};
    # Stream bodies both ways: no temporary files, so the worker needs no writable folder.
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    # The raw request target, before any normalisation, must be one of the Fleet API's paths.
    map $request_uri $synthlearn_fleet_call {{
        default 0;
{allowed}
    }}
    upstream synthlearn_superlink {{ server 127.0.0.1:{superlink_port}; }}
    server {{
        listen {host}:{listen_port} ssl;
        ssl_certificate {tls.server_cert.absolute()};
        ssl_certificate_key {tls.server_key.absolute()};
        ssl_protocols TLSv1.2 TLSv1.3;
        if ($synthlearn_fleet_call = 0) {{ return 403; }}
        location /v1/fleet/ {{
            limit_except POST {{ deny all; }}
            proxy_http_version 1.1;
            proxy_pass https://synthlearn_superlink;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {tls.ca_cert.absolute()};
            proxy_ssl_name {UPSTREAM_NAME};
            proxy_ssl_server_name on;
        }}
        location / {{ return 403; }}
    }}
}}
"""


def check_loopback_name(server_cert: Path) -> None:
    """The proxy verifies the SuperLink as ``localhost`` on the loopback hop: the certificate
    must name it (deploy/make_certs.py always adds it; certificates made before did not)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(server_cert).read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except (OSError, ValueError, x509.ExtensionNotFound) as exc:
        raise FlowerProcessError(f"{server_cert}: cannot read its names ({exc})") from None
    if UPSTREAM_NAME not in dns:
        raise FlowerProcessError(
            f"{server_cert} does not name {UPSTREAM_NAME!r} (names: {', '.join(dns) or 'none'}); "
            "the Fleet proxy checks the SuperLink by that name on 127.0.0.1. Make new "
            "certificates with deploy/make_certs.py in an empty folder and send the new "
            "ca.crt to every site")


def start_fleet_proxy(work: Path, listen_host: str, listen_port: int, superlink_port: int,
                      tls: TlsFiles, timeout: float = 30.0) -> FlowerProcess:
    """Write the config, check it with ``nginx -t`` and start nginx in its own process group."""
    import subprocess

    binary = nginx_binary()
    check_loopback_name(tls.server_cert)
    work = work.absolute()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "nginx-tmp").mkdir(parents=True, exist_ok=True)
    conf = work / "fleet-proxy.conf"
    conf.write_text(render_nginx_conf(listen_host, listen_port, superlink_port, tls, work),
                    encoding="utf-8")
    argv = [binary, "-p", str(work), "-e", str(work / "logs" / "fleet-proxy-error.log"),
            "-c", str(conf)]
    check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise FlowerProcessError(f"nginx rejected {conf}: {check.stderr.strip()}")
    proc = spawn("fleet-proxy", argv, work / "fleet-proxy-home", work / "logs" / "fleet-proxy.log",
                 port=listen_port)
    listening_or_stopped(proc, listen_host, listen_port, timeout)
    return proc
