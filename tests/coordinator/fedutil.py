"""Helpers for the Flower tests: tiny keyed sites, a trust folder, one run to completion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def make_keyed_site(root: Path, name: str, n: int = 48, size: int = 32, seed: int = 0) -> Path:
    """A phantom site store with an Ed25519 key and pseudonym (what `node keygen` leaves)."""
    from node.phantoms import phantom_store
    from shared.signing import generate_keypair

    site = root / name
    phantom_store(site, n=n, size=size, seed=seed)
    generate_keypair(site / "keys")
    (site / "keys" / "pseudonym").write_text(name)
    return site


def trust_folder(root: Path, sites: dict[str, Path]) -> Path:
    """The coordinator's trust folder: each site's public key, copied by hand in real life."""
    trust = root / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    for name, site in sites.items():
        shutil.copyfile(site / "keys" / "site.pub", trust / f"{name}.pub")
    return trust


def run_app(fed: Any, run_config: dict[str, Any], timeout: float = 240.0) -> dict[str, Any]:
    """Submit the repo's Flower app and wait for `finished:completed` (raises otherwise)."""
    from shared.flower_proc import flwr_run, wait_for_run

    run_id = flwr_run(REPO, fed.connection, fed.cli_home, run_config)
    row = wait_for_run(fed.connection, fed.cli_home, run_id, timeout=timeout, poll=1.0)
    row["run_id"] = run_id
    return row


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def nginx_or_skip() -> None:
    """The Fleet proxy's tests need nginx: skip where it is missing, fail under .ci/run."""
    import os
    import shutil
    from pathlib import Path

    import pytest

    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return
    if os.environ.get("SYNTHLEARN_REQUIRE_NGINX") == "1":
        pytest.fail("nginx is required here (`make test` installs it: apt-get install -y nginx)")
    pytest.skip("nginx not installed (apt-get install -y nginx; `make test` installs it)")
