#!/usr/bin/env python3
"""Check whether flwr's own `--fleet-api-type/--fleet-api-address` could be the only public
port (the route deploy/README.md "Why a proxy" weighs against the nginx proxy).

Starts `flower-superlink` with its HTTP app on 127.0.0.1 (TLS, SuperNode auth) and
`--fleet-api-type grpc-rere --fleet-api-address 127.0.0.1:PORT`, then reports whether anything
listens on PORT and what the SuperLink logged about the flags. With flwr 1.41 the answer is
"nothing listens": the public Fleet listener would have to be something else.

    python deploy/check_fleet_api_flag.py
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import tempfile
import time
from pathlib import Path


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def main() -> int:
    from coordinator.certs import make_ca_and_server
    from shared.flower_proc import TlsFiles, free_port, spawn, superlink_argv, wait_for_port

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = make_ca_and_server(work / "tls")
        tls = TlsFiles(paths["ca_cert"], paths["server_cert"], paths["server_key"])
        http_port, fleet_port = free_port(), free_port()
        argv = superlink_argv(http_port, work / "superlink.db", tls=tls, auth=True)
        argv += ["--fleet-api-type", "grpc-rere", "--fleet-api-address",
                 f"127.0.0.1:{fleet_port}"]
        proc = spawn("superlink", argv, work / "home", work / "superlink.log", port=http_port)
        try:
            wait_for_port("127.0.0.1", http_port, 60, proc)
            time.sleep(3.0)  # give a separate Fleet listener time to open
            print(f"HTTP app (Fleet+Control+runtime) on 127.0.0.1:{http_port}: "
                  f"{'listening' if _listening(http_port) else 'NOT listening'}")
            print(f"--fleet-api-address 127.0.0.1:{fleet_port}: "
                  f"{'listening' if _listening(fleet_port) else 'NOT listening'}")
            for line in proc.log_text().splitlines():
                if "fleet-api" in line or "Fleet" in line:
                    print("  log:", re.sub(r"\x1b\[[0-9;]*m", "", line).strip())
        finally:
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
