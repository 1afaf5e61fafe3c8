"""The one home of test site builders for the coordinator tests: tiny keyed sites, stand-in
synthetic sets (audited), a trust folder, one Flower run to completion."""

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


def lesion_site(root: Path, name: str, lesions: tuple[str, ...], n: int = 60, size: int = 16,
                seed: int = 0, keyed: bool = True) -> Path:
    """A phantom site store whose images show only ``lesions`` (vocabulary names), cycled:
    sites that each lack some class. Every fifth pair of images is held out for testing."""
    import numpy as np

    from node.phantoms import render_with_bbox
    from node.store import Accepted, StoreWriter
    from shared.signing import generate_keypair

    site = root / name
    rng = np.random.default_rng([seed, 7])
    batch = []
    for i in range(n):
        lesion = lesions[i % len(lesions)]
        img, box = render_with_bbox(rng, lesion, size)
        batch.append(Accepted(f"{name}-{i:04d}", np.clip(np.rint(img * 255), 0, 255)
                              .astype(np.uint8), lesion, f"src:{i}", patient_id=f"P{i}",
                              split="test" if (i // len(lesions)) % 4 == 3 else "train",
                              bbox=box))
    with StoreWriter(site, size=size, test_fraction=0.2) as w:
        w.add_batch(batch)
    if keyed:
        generate_keypair(site / "keys")
        (site / "keys" / "pseudonym").write_text(name)
    return site


def stand_in_lesions(n: int, size: int, seed: int, lesions: tuple[str, ...]) -> Any:
    """:func:`stand_in_synthetic` for lesion mode: rendered phantoms of ``lesions`` only,
    labelled by their vocabulary id in the whole vocabulary's class list."""
    import numpy as np

    from node.phantoms import render
    from shared.synthetic import SyntheticSet
    from shared.vocabulary import LESION_CLASSES, class_id

    rng = np.random.default_rng([seed, 11])
    names = [lesions[i % len(lesions)] for i in range(n)]
    imgs = np.stack([np.rint(render(rng, name, size) * 255).astype(np.uint8) for name in names])
    return SyntheticSet(imgs, np.array([class_id(x) for x in names]), list(LESION_CLASSES))


def stand_in_synthetic(n: int, size: int, seed: int) -> Any:
    """What `node generate` would leave, without a GAN: freshly rendered phantoms (never a
    stored real image), alternating normal / abnormal. The coordinator tests exercise the
    files and messages, not how good a seconds-long GAN is."""
    import numpy as np

    from node.phantoms import render
    from shared.synthetic import SyntheticSet

    rng = np.random.default_rng(seed)
    imgs = np.stack([np.rint(render(rng, "No finding" if i % 2 == 0 else "Surgical implant",
                                    size) * 255).astype(np.uint8) for i in range(n)])
    return SyntheticSet(imgs, np.arange(n) % 2, ["normal", "abnormal"])


def audited_stand_in(site: Path, seed: int, n: int = 24, size: int = 16) -> None:
    """``site/synthetic/default`` from :func:`stand_in_synthetic`, with its audit summary."""
    from node.audit import run_audit
    from node.audit.config import AuditConfig

    stand_in_synthetic(n, size, seed).save(site / "synthetic" / "default")
    run_audit(site, cfg=AuditConfig(encoder="none", n_boot=200, min_heldout=5), progress=False)


def collect_config(root: Path, trust: Path, sites: dict[str, Path]) -> tuple[dict[str, Any],
                                                                          dict[str, Any]]:
    """(coordinator run config, per-site node config) of a tiny ``collect`` run over
    :func:`audited_stand_in`-style sites: 16-px phantoms look alike, so the audit's copy gate
    fails and each admin overrides it."""
    cfg = {"work-dir": str(root / "work"), "trust-dir": str(trust), "mode": "collect",
           "expected-sites": len(sites), "cnn-epochs": 1, "cnn-width": 8, "cnn-batch": 16,
           "n-boot": 200, "own-synthetic": False, "node-wait-s": 1.0}
    node_cfg = {name: {"site-dir": str(site), "accept-risk": "test stand-ins: 16 px phantoms "
                       "look alike; no patient exists"} for name, site in sites.items()}
    return cfg, node_cfg


def answer_requests(work: Path, sites: dict[str, Path], replies: Path) -> None:
    """The air-gapped sites' side: each runs `node evaluate --request` on the request folder
    the coordinator wrote for it and carries its signed reply to ``replies``."""
    from typer.testing import CliRunner

    from shared.cli import app

    replies.mkdir(parents=True, exist_ok=True)
    for name, site in sites.items():
        req = work / "requests" / name / "request.json"
        res = CliRunner().invoke(app, ["node", "evaluate", "--request", str(req),
                                       "--site-dir", str(site)])
        assert res.exit_code == 0, res.output + str(res.exception or "")
        shutil.copy(req.parent / f"reply-{name}.json", replies)


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


def start_refused_supernode(work: Path, name: str, address: str, node_config: dict[str, Any],
                            **kwargs: Any) -> Any:
    """Start a SuperNode the SuperLink should refuse; return its process, or None when the
    refusal came before the node's own ClientApp API port was up (it then exits at once, and
    ``start_supernode`` raises with its log). Either is a refusal; anything else fails."""
    from shared.errors import FlowerProcessError
    from shared.flower_proc import start_supernode

    try:
        return start_supernode(work, name, address, node_config, **kwargs)
    except FlowerProcessError as exc:
        assert "2004" in str(exc), exc  # Flower's "Failed to activate SuperNode"
        return None
