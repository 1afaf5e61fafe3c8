"""A hostile site's bundle: signed with its own (trusted) key, but lying about who it is, what
it holds or how big it is. Each is refused with its reason, before anything is allocated."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from shared.bundle import MANIFEST, SIGNATURE, BundleError, verify_bundle
from shared.signing import (
    PUBLIC_NAME,
    SigningError,
    canonical_json,
    generate_keypair,
    load_trust,
    sign_bytes,
)
from tests.shared.test_bundle import make, member, rewrite


def resigned(env: dict[str, Path], src: Path, change: dict[str, Any], name: str) -> Path:
    """The bundle with manifest fields changed and signed again by the site's own key: what
    a site that controls its key can always send."""
    manifest = json.loads(member(src, MANIFEST))
    manifest.update(change)
    data = canonical_json(manifest)
    sig, fp = sign_bytes(data, env["keys"])
    sig_doc = {"algorithm": "ed25519", "bundle_format": manifest["format_version"],
               "key_fingerprint": fp, "signature": base64.b64encode(sig).decode("ascii")}
    return rewrite(src, env["tmp"] / name, {MANIFEST: data,
                                            SIGNATURE: canonical_json(sig_doc) + b"\n"})


def test_a_bundle_claiming_another_sites_name_is_refused(env: dict[str, Path]) -> None:
    # site-a's key is trusted as site-a; the real site-b has its own key in the folder.
    generate_keypair(env["tmp"] / "kb")
    (env["trust"] / "site-b.pub").write_bytes((env["tmp"] / "kb" / PUBLIC_NAME).read_bytes())
    lying = make(env, "lie.slbundle", site="site-b")
    with pytest.raises(BundleError) as err:
        verify_bundle(lying, env["trust"])
    assert err.value.reason == "site-mismatch"
    assert "claims site 'site-b' but is signed by the key of 'site-a'" in str(err.value)
    assert verify_bundle(make(env), env["trust"]).site == "site-a"


def test_one_key_under_two_site_names_is_refused(env: dict[str, Path]) -> None:
    (env["trust"] / "site-z.pub").write_bytes((env["keys"] / PUBLIC_NAME).read_bytes())
    with pytest.raises(SigningError, match=r"site-a\.pub and site-z\.pub hold the same key"):
        load_trust(env["trust"])


def test_a_bundle_without_an_audit_summary_is_refused(env: dict[str, Path]) -> None:
    bare = resigned(env, make(env), {"audit": None}, "bare.slbundle")
    with pytest.raises(BundleError, match=r"carries no memorization-audit summary") as err:
        verify_bundle(bare, env["trust"], require_gates=False)
    assert err.value.reason == "no-audit"


@pytest.mark.parametrize("size, why", [
    ([100_000, 100_000], "image size 100000×100000 is outside 1..4096"),
    (["16", 12], "manifest has no image size"),
    ([4096, 4096], r"images/000000.png is \(16, 12\), manifest says 4096×4096"),
])
def test_a_huge_or_malformed_signed_image_size_allocates_nothing(
        env: dict[str, Path], size: list[Any], why: str) -> None:
    import tracemalloc

    hostile = resigned(env, make(env), {"image_size": size}, "big.slbundle")
    tracemalloc.start()
    with pytest.raises(BundleError, match=why):
        verify_bundle(hostile, env["trust"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 << 20  # 6 images of 4096² would be 100 MB; 100000² would be 60 GB


def test_too_many_pixels_in_all_are_refused_before_allocating(
        env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.bundle

    monkeypatch.setattr(shared.bundle, "MAX_PIXEL_BYTES", 1000)
    with pytest.raises(BundleError, match="6 images of 16×12 would need 1152 bytes"):
        verify_bundle(make(env), env["trust"])
