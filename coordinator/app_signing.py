"""The operator's signature on the app bundle, stored where Flower's SuperNodes read it.

Flower 1.41 signs apps only through Flower Hub (``flwr app review`` uploads a signature; the
SuperLink fetches it with the app). For an app submitted from disk — every run here, offline —
the SuperLink's Control API drops whatever verification data the request carries and stores
the FAB with none, so a SuperNode started with ``--trusted-entities`` refuses it. This module
closes that gap on the coordinator: it builds the FAB exactly as ``flwr run`` does (the build
is deterministic), signs it with the operator's Ed25519 key (:func:`shared.app_signing.sign_fab`)
and writes the signature into the SuperLink's own FAB record, right after ``flwr run``
returns and before the ServerApp (which takes seconds to start) sends the first message.
The check itself stays Flower's, at the site. If the signature arrived late, the SuperNode
would refuse the run (it fails closed); it cannot make an unsigned app run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from shared.app_signing import sign_fab
from shared.errors import FlowerProcessError


def build_fab(app_dir: Path) -> bytes:
    """The FAB ``flwr run APP_DIR`` submits (Flower's own builder)."""
    from flwr.cli.build import build_fab_from_disk

    return bytes(build_fab_from_disk(Path(app_dir)))


def attach_signature(database: Path, fab: bytes, app_key: Path) -> str:
    """Sign ``fab`` and store the signature in the SuperLink's record of it; return its hash."""
    from flwr.supercore.state.schema.corestate_models import Fab as FabModel

    digest = hashlib.sha256(fab).hexdigest()
    verifications = json.dumps(sign_fab(fab, app_key))
    if not Path(database).exists():
        raise FlowerProcessError(f"{database}: no SuperLink database here; give the --work "
                                 "folder of `synthlearn coordinator serve` (the app is signed "
                                 "into the SuperLink's record of it)")
    con = sqlite3.connect(database, timeout=30)
    try:
        with con:
            cur = con.execute(f"UPDATE {FabModel.__tablename__} SET verifications = ? "
                              "WHERE fab_hash = ?", (verifications, digest))
    finally:
        con.close()
    if cur.rowcount != 1:
        raise FlowerProcessError(f"the SuperLink holds no app with hash {digest[:12]}…: the "
                                 "submitted app is not the one that was signed")
    return digest
