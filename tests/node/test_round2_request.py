"""A site's side of round 2: it pretrains only on what the request brings, after checking
every byte of it; anything off is a signed refusal, and the site's runs are untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.federation import receive_pretrain_set
from shared import pretrain_set
from shared.protocol import PROTOCOL
from tests.node.test_client_app import ask

NAMES = ["normal", "abnormal"]
RISK = "test site: 32 px blobs look alike; no patient exists"


@pytest.fixture
def keyed_site(tiny_site: Path) -> Path:
    from shared.signing import generate_keypair

    generate_keypair(tiny_site / "keys")
    (tiny_site / "keys" / "pseudonym").write_text("site-t")
    return tiny_site


def _payload(n: int = 24, size: int = 32, names: list[str] = NAMES, seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    return pretrain_set.encode(rng.integers(0, 256, (n, size, size), dtype=np.uint8),
                               np.arange(n) % len(names), names)


def _request(data: bytes | None, **extra: Any) -> dict[str, Any]:
    req = {"protocol": PROTOCOL, "action": "export-bundle", "mode": "train", "round": 2,
           "run-tag": "fed-1", "n-synthetic": 16, "seed": 0,
           "gan-config": json.dumps({"kimg": 0.1, "init_pretrain_kimg": 0.1, "batch": 8,
                                     "min_class_images": 4}),
           "baseline-config": json.dumps({"epochs": 1, "width": 8})}
    if data is not None:
        req["pretrain-sha256"] = hashlib.sha256(data).hexdigest()
    req.update(extra)
    return req


# The admin takes the request's 1-epoch baseline recipe: these tests are about round 2.
NODE = {"allow-train": True, "require-dp": False, "accept-risk": RISK,
        "baseline-recipe": "request"}
GOOD = _payload()


@pytest.mark.parametrize("request_, arrays, node, why", [
    (_request(None), None, {}, "carries no pretraining set"),
    (_request(GOOD, round=1), {"pretrain": GOOD}, {}, "only with a round-2"),
    (_request(GOOD, round="two"), {"pretrain": GOOD}, {}, "not 1 or 2"),
    (_request(GOOD, round=2.5), {"pretrain": GOOD}, {}, "not 1 or 2"),
    (_request(GOOD, round=True), {"pretrain": GOOD}, {}, "not 1 or 2"),
    (_request(GOOD, mode="collect"), {"pretrain": GOOD}, {}, "needs mode 'train'"),
    (_request(GOOD, **{"pretrain-sha256": "0" * 64}), {"pretrain": GOOD}, {},
     "changed in transit"),
    (_request(GOOD), {"pretrain": GOOD, "weights": GOOD}, {}, "only a round-2 'pretrain'"),
    (_request(GOOD), {"pretrain": GOOD}, {"max-pretrain-images": 0},
     "max_pretrain_images = 0"),
    (_request(GOOD), {"pretrain": GOOD}, {"max-pretrain-images": 10}, "more than this site"),
    (_request(_payload(names=["No finding", "Osteophytes"])),
     {"pretrain": _payload(names=["No finding", "Osteophytes"])}, {}, "class lists differ"),
    (_request(b"junk"), {"pretrain": b"junk"}, {}, "not an npz"),
])
def test_bad_round2_requests_are_refused_before_anything_is_written(
        keyed_site: Path, request_: dict[str, Any], arrays: dict[str, bytes] | None,
        node: dict[str, Any], why: str) -> None:
    cfg = ask(keyed_site, request_, "train", arrays, node={**NODE, **node})
    assert cfg["status"] == "refused", cfg
    assert why in cfg["reason"]
    assert "bundle" not in cfg
    assert not (keyed_site / "runs").exists()
    assert not (keyed_site / "round2-inputs").exists()


def test_round2_beyond_the_sites_lifetime_epsilon_is_refused_with_what_is_left(
        keyed_site: Path) -> None:
    from node.privacy_ledger import record_spend

    record_spend(keyed_site, 8.0, 1e-5, run="fed-1")  # round 1
    req = _request(GOOD, **{"gan-config": json.dumps({"kimg": 0.1, "dp_epsilon": 3.0})})
    cfg = ask(keyed_site, req, "train", {"pretrain": GOOD},
              node={**NODE, "require-dp": True, "lifetime-epsilon": 10.0})
    assert cfg["status"] != "ok"
    assert "lifetime ε = 10" in cfg["reason"] and "2 left" in cfg["reason"]
    assert not (keyed_site / "runs").exists()
    assert not (keyed_site / "round2-inputs").exists()


def test_round2_pretrains_on_exactly_the_set_sent_then_exports_a_bundle(
        keyed_site: Path) -> None:
    import torch

    torch.set_num_threads(1)
    # A 64-image store holds 16 test images: the audit's calibration is told to make do.
    (keyed_site / "site.toml").write_text('[audit]\nmin_heldout = 5\nencoder = "none"\n'
                                          'n_boot = 200\n')
    cfg = ask(keyed_site, _request(GOOD), "train", {"pretrain": GOOD}, node=NODE)
    assert cfg["status"] == "ok", cfg
    assert cfg["bundle-sha256"]
    kept = keyed_site / "round2-inputs" / "fed-1"
    from shared.synthetic import SyntheticSet

    images, labels, _ = pretrain_set.decode(GOOD, max_images=100)
    got = SyntheticSet.load(kept)
    assert np.array_equal(got.images, images) and np.array_equal(got.labels, labels)
    run = keyed_site / "runs" / "fed-1-round2"
    described = json.loads((run / "metrics.json").read_text())["init_from"]
    assert described["kind"] == "synthetic-set" and Path(described["path"]) == kept
    assert described["images"] == len(labels)
    assert (run / "pretrain" / "checkpoint.pt").exists()
    assert not (keyed_site / "runs" / "fed-1").exists()  # round 1's run name is not reused


def test_a_repeat_with_another_set_cannot_rewrite_what_an_existing_round2_run_learnt_from(
        keyed_site: Path) -> None:
    """A repeated round-2 request (coordinator restarted) resumes the run of that tag; its
    kept pretraining set is the site's record of what the GAN learnt from, so a different set
    for the same tag is refused and the record stays. The same set again is fine."""
    from node.federation import NodeSettings, receive_pretrain_set
    from node.site_policy import SitePolicy
    from shared.errors import RequestRefusedError
    from shared.synthetic import SyntheticSet

    settings, policy = NodeSettings(site_dir=str(keyed_site)), SitePolicy()
    kept = receive_pretrain_set(settings, policy, _request(GOOD), GOOD, "binary", "fed-1")
    (keyed_site / "runs" / "fed-1-round2" / "pretrain").mkdir(parents=True)  # it started
    assert receive_pretrain_set(settings, policy, _request(GOOD), GOOD, "binary",
                                "fed-1") == kept
    other = _payload(seed=4)
    with pytest.raises(RequestRefusedError, match="new run tag"):
        receive_pretrain_set(settings, policy, _request(other), other, "binary", "fed-1")
    images, _, _ = pretrain_set.decode(GOOD, max_images=100)
    assert np.array_equal(SyntheticSet.load(kept).images, images)


def test_round2_asked_again_at_the_lifetime_limit_is_answered_without_spending(
        keyed_site: Path) -> None:
    """A coordinator restarted after this site finished a DP round 2 asks again. The run is
    done (it spends nothing more), so the lifetime check must not count its ε twice: at the
    limit the repeat was refused and the site's round 2 was lost."""
    import torch

    from node.privacy_ledger import spent

    torch.set_num_threads(1)
    (keyed_site / "site.toml").write_text('[audit]\nmin_heldout = 5\nencoder = "none"\n'
                                          'n_boot = 200\n')
    gan = {"kimg": 0.048, "init_pretrain_kimg": 0.05, "batch": 8, "min_class_images": 4,
           "dp_epsilon": 8.0, "dp_delta": 1e-3}
    req = _request(GOOD, **{"gan-config": json.dumps(gan)})
    node = {**NODE, "require-dp": True}
    first = ask(keyed_site, req, "train", {"pretrain": GOOD}, node=node)
    assert first["status"] == "ok", first
    total = spent(keyed_site)[0]
    assert total > 0
    again = ask(keyed_site, req, "train", {"pretrain": GOOD},
                node={**node, "lifetime-epsilon": total})
    assert again["status"] == "ok", again
    assert spent(keyed_site)[0] == total
    over = _request(GOOD, **{"run-tag": "fed-2", "gan-config": json.dumps(gan)})
    refused = ask(keyed_site, over, "train", {"pretrain": GOOD},
                  node={**node, "lifetime-epsilon": total})
    assert refused["status"] != "ok" and "lifetime" in refused["reason"]


def test_a_set_of_another_image_size_is_resized_to_the_store(keyed_site: Path) -> None:
    """Bundles hold the generators' output size (a 16² store trains at 32², and stores differ
    between sites): the set is brought to this store's 32² before the GAN reads it."""
    from node.federation import settings_from_node_config

    settings = settings_from_node_config({"site-dir": str(keyed_site), **NODE})
    data = _payload(size=64)
    folder = receive_pretrain_set(settings, settings.policy(), _request(data), data,
                                  "binary", "fed-9")
    from shared.synthetic import SyntheticSet, resize_u8

    got = SyntheticSet.load(folder)
    images, _, _ = pretrain_set.decode(data, max_images=100)
    assert got.images.shape[1:] == (32, 32) and got.info["resized_from"] == 64
    assert np.array_equal(got.images, resize_u8(images, 32))
