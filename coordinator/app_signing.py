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

from shared.app_signing import load_app_private_key, sign_fab
from shared.errors import FlowerProcessError


def build_fab(app_dir: Path) -> bytes:
    """The FAB ``flwr run APP_DIR`` submits (Flower's own builder; fixed zip dates, so the
    same files always give the same bytes)."""
    from flwr.cli.build import build_fab_from_disk

    return bytes(build_fab_from_disk(Path(app_dir)))


def freeze_app(app_dir: Path, dest: Path) -> tuple[Path, bytes]:
    """Copy exactly the files of the app's FAB into ``dest`` and return (dest, FAB bytes).

    Why: ``flwr run`` builds the FAB again from the folder it is given; submitting a frozen
    copy guarantees that what is signed is what is submitted, even if the source tree is
    edited in between.
    """
    import io
    import shutil
    import zipfile

    fab = build_fab(app_dir)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        for name in archive.namelist():
            if name.startswith(".info/"):
                continue
            target = (dest / name).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise FlowerProcessError(f"app file {name!r} would land outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    if build_fab(dest) != fab:
        raise FlowerProcessError(f"the app copied to {dest} does not rebuild to the same bundle")
    return dest, fab


def check_signing(database: Path, app_key: Path) -> None:
    """Refuse before ``flwr run``, not after: a wrong key (the ``.pub`` instead of the private
    half) or database path found only once the run is submitted left an unsigned run waiting
    on the SuperLink for sites that refuse it."""
    load_app_private_key(app_key)
    if not Path(database).exists():
        raise FlowerProcessError(f"{database}: no SuperLink database here; give the --work "
                                 "folder of `synthlearn coordinator serve` (the app is signed "
                                 "into the SuperLink's record of it)")


def attach_signature(database: Path, fab: bytes, app_key: Path) -> str:
    """Sign ``fab`` and store the signature in the SuperLink's record of it; return its hash."""
    from flwr.supercore.state.schema.corestate_models import Fab as FabModel

    digest = hashlib.sha256(fab).hexdigest()
    verifications = json.dumps(sign_fab(fab, app_key))
    check_signing(database, app_key)
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
