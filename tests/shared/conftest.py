"""Fixtures of the shared/ tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    """A site key and a trust folder holding it as ``site-a.pub``."""
    from shared.signing import PUBLIC_NAME, generate_keypair

    keys, trust = tmp_path / "keys", tmp_path / "trust"
    generate_keypair(keys)
    trust.mkdir()
    (trust / "site-a.pub").write_bytes((keys / PUBLIC_NAME).read_bytes())
    return {"keys": keys, "trust": trust, "tmp": tmp_path}
