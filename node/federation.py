"""What a site answers to the coordinator, in either transport (Flower or files).

No Flower here: :mod:`node.client_app` turns Flower messages into calls of these functions,
and ``synthlearn node evaluate --request FILE`` calls the same ones for air-gapped sites.

The rule this module enforces (DESIGN §2): a reply holds only a signed bundle (synthetic
images, labels, numbers) or signed number-only records (evaluation AUC + CI, the local
baseline). Requests are checked against a fixed list of actions and keys and refused, with a
reason, when they ask for anything else — real pixels, weights, per-image scores, or a
different accepted-risk override than the one the site's admin configured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from node.site_policy import SitePolicy
from shared.errors import RequestRefusedError
from shared.files import UntrustedJSONError, loads_untrusted, sha256_bytes
from shared.names import safe_name
from shared.protocol import (
    ACTIONS,
    FORBIDDEN_GAN_KEYS,
    MAX_LIST,
    PROTOCOL,
    SIGNED_KINDS,
    Reply,
    software_version,
)

if TYPE_CHECKING:  # torch is imported only when a request trains
    from shared.cnn_train import ClassifierConfig


@dataclass(frozen=True)
class NodeSettings:
    """A site's federation settings: the SuperNode's ``--node-config`` (set by its admin).

    Why here and not in the request: what a site is willing to do (train on request, how much
    ε, how many evaluations, export despite a failed audit gate) is the hospital's decision,
    never the coordinator's. The limits live in :class:`node.site_policy.SitePolicy` (site
    TOML, then the policy keys of the node config, kept in ``overrides``).
    """

    site_dir: str
    site_name: str = ""
    key_dir: str = ""
    accept_risk: str = ""
    """Admin's signed override reason for exporting despite failed audit gates ('' = none)."""
    policy_file: str = ""
    """The site TOML with ``[policy]`` and ``[audit]`` ('' = ``SITE/site.toml`` if present)."""
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Policy keys the admin passed as node config (``allow-train=true``…)."""

    @property
    def site(self) -> Path:
        return Path(self.site_dir)

    @property
    def keys(self) -> Path:
        return Path(self.key_dir) if self.key_dir else self.site / "keys"

    @property
    def name(self) -> str:
        """The admin's pseudonym: node-config site-name, else ``keys/pseudonym`` (keygen)."""
        if self.site_name:
            return self.site_name
        path = self.keys / "pseudonym"
        if path.exists():
            return path.read_text(encoding="utf-8").strip() or self.site.name
        return self.site.name

    def policy(self) -> SitePolicy:
        from node.site_policy import load_policy

        return load_policy(self.site, self.policy_file or None, self.overrides)


def settings_from_node_config(config: Mapping[str, Any]) -> NodeSettings:
    """NodeSettings from Flower's node config (``site-dir="…" site-name="…"``); policy keys
    (``allow-train``, ``max-epsilon-per-run``…) are checked against the policy table."""
    from node.site_policy import POLICY_KEYS
    from shared.config import from_mapping

    data = {str(k).replace("-", "_"): v for k, v in config.items()
            if str(k) not in ("partition-id", "num-partitions")}
    if "site_dir" not in data:
        raise RequestRefusedError(
            "this SuperNode has no site directory: start it with "
            "`synthlearn node join --site-dir SITE` (node-config site-dir=\"…\")"
        )
    overrides = {k: data.pop(k) for k in list(data) if k in POLICY_KEYS}
    settings = from_mapping(NodeSettings, data, source="--node-config")
    settings = dataclasses.replace(settings, overrides=overrides)
    if not settings.site.is_dir():
        raise RequestRefusedError(
            f"{settings.site}: site directory not found (node-config site-dir)")
    settings.policy()  # a bad policy value stops here, naming the key
    return settings


def check_request(request: Mapping[str, Any]) -> str:
    """The request's action, or :class:`RequestRefusedError` saying what is wrong with it."""
    action = request.get("action")
    if action not in ACTIONS:
        raise RequestRefusedError(f"unknown action {action!r}; a site only answers "
                             f"{', '.join(sorted(ACTIONS))}")
    if request.get("protocol") != PROTOCOL:
        raise RequestRefusedError(f"protocol {request.get('protocol')!r} is not {PROTOCOL}; "
                             "coordinator and site run incompatible synthlearn versions")
    extra = sorted(set(request) - ACTIONS[str(action)])
    if extra:
        raise RequestRefusedError(f"request for {action!r} carries keys a site does not accept: "
                             f"{', '.join(extra)}")
    return str(action)


def _json_field(request: Mapping[str, Any], key: str) -> dict[str, Any]:
    raw = request.get(key)
    if raw in (None, ""):
        return {}
    try:
        doc = loads_untrusted(str(raw))
    except UntrustedJSONError as exc:
        raise RequestRefusedError(f"{key}: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestRefusedError(f"{key} must be a JSON object")
    return doc


def check_numbers_only(obj: Any, where: str = "record") -> None:
    """Refuse anything in an outgoing record that could carry per-image data.

    Allowed: numbers, booleans, null, short strings, short lists, nested objects of those.
    """
    if obj is None or isinstance(obj, bool | int | float):
        return
    if isinstance(obj, str):
        if len(obj) > 512:
            raise RequestRefusedError(f"{where}: a string of {len(obj)} characters is not a number "
                                 "summary; refusing to send it")
        return
    if isinstance(obj, list | tuple):
        if len(obj) > MAX_LIST:
            raise RequestRefusedError(f"{where}: a list of {len(obj)} values looks like per-image "
                                 "data; refusing to send it")
        for i, v in enumerate(obj):
            check_numbers_only(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_numbers_only(v, f"{where}.{k}")
        return
    raise RequestRefusedError(f"{where}: a {type(obj).__name__} cannot leave the site")


def sign_numbers(record: dict[str, Any], settings: NodeSettings) -> dict[str, Any]:
    """Check a number-only record and sign it with the site key."""
    from shared.signing import sanitize_json, sign_record

    if record.get("kind") not in SIGNED_KINDS:
        raise RequestRefusedError(f"record kind {record.get('kind')!r} may not leave the site")
    clean = sanitize_json(record)
    clean["site"] = settings.name
    check_numbers_only(clean, str(record.get("kind")))
    return sign_record(clean, settings.keys)


_PATH_RE = re.compile(
    r"(?:[A-Za-z]:)?[\\/](?:[^\n:;,'\"<>|\\/]*[\\/])+"   # the folders, spaces allowed
    r"(?:[^\n:;,'\"<>|\\/]*\.\w{1,8}(?=[\s:;,'\")\]]|$)"  # a file name with spaces + extension
    r"|[^\s:;,'\"<>|\\/]*)")                                # or the last part up to a space


def scrub_paths(text: str) -> str:
    """Replace file-system paths in a message by ``<path>``: an error text leaving the site
    must not carry local folder or file names (a DICOM file name can be an identifier, and a
    folder can be a patient's name, spaces included).

    >>> scrub_paths("/data/pacs/P123/img.dcm: not DICOM; see /srv/site-a/store")
    '<path>: not DICOM; see <path>'
    >>> scrub_paths("/data/St Marys Hospital/Smith John/IMG 1.dcm is truncated")
    '<path> is truncated'
    """
    return _PATH_RE.sub("<path>", text)


def refusal(action: str, reason: str, settings: NodeSettings | None = None,
            request: Mapping[str, Any] | None = None, status: str = "refused") -> Reply:
    """A reply that says no, and why (paths scrubbed), instead of data. When the site key is
    at hand the reason is signed (``reply-json`` = ``{"refusal": SIGNED}``), bound to the
    request it answers, so the coordinator can show it was the site that said no."""
    from shared.signing import SigningError, sign_record

    text = scrub_paths(reason)[:2000]
    cfg = {"protocol": PROTOCOL, "action": action, "status": status, "reason": text,
           "site": settings.name if settings else "", "software-version": software_version()}
    if settings is not None:
        payload = {"kind": "refusal", "site": settings.name, "action": action,
                   "status": status, "reason": text,
                   "run_tag": str((request or {}).get("run-tag", ""))[:200],
                   "request_id": str((request or {}).get("request-id", ""))[:200]}
        with contextlib.suppress(SigningError):  # no usable key: it goes back unsigned
            cfg["reply-json"] = json.dumps({"refusal": sign_record(payload, settings.keys)},
                                           sort_keys=True)
    return Reply(cfg)


def _base(action: str, settings: NodeSettings) -> dict[str, Any]:
    return {"protocol": PROTOCOL, "action": action, "status": "ok", "site": settings.name,
            "software-version": software_version()}


# -- ping ------------------------------------------------------------------------------------
def handle_ping(settings: NodeSettings, request: Mapping[str, Any]) -> Reply:
    """Who is there, with which software and key (nothing else). The answer is a signed
    record (``kind: ping``, the site name and the run tag), so the coordinator can check that
    the name this node claims is the name its trusted key belongs to."""
    from shared.signing import sign_record

    check_request(request)
    cfg = _base("ping", settings)
    policy = settings.policy()
    payload = {"kind": "ping", "site": settings.name,
               "run_tag": str(request.get("run-tag", ""))[:200],
               "allow_train": policy.allow_train, "software_version": software_version()}
    record = sign_record(payload, settings.keys)
    cfg["reply-json"] = json.dumps({"key_fingerprint": record["key_fingerprint"],
                                    "allow_train": policy.allow_train, "ping": record},
                                   sort_keys=True)
    return Reply(cfg).check()


# -- export ----------------------------------------------------------------------------------
Log = Callable[[str], None]


def _noop(_: str) -> None:
    return None


def handle_export(settings: NodeSettings, request: Mapping[str, Any],
                  log: Log = _noop, pretrain: bytes | None = None) -> Reply:
    """Produce a fresh signed bundle and return its bytes.

    ``collect``: export the site's latest audited synthetic set (trained by its admin).
    ``train``: train within the stated budget (capped by the site's own ``max-train-minutes``),
    generate, audit, then export. Either way the export applies the audit gates; only the
    admin's ``accept-risk`` node setting can override them.

    ``round`` 2 (``train`` only) comes with ``pretrain``: the other sites' synthetic images
    (:mod:`shared.pretrain_set`). The GAN pretrains on them, then fine-tunes on this site's
    real images, in a new run ``<tag>-round2``; the privacy ledger counts both rounds, so a
    second round that would pass the site's lifetime ε is refused before training.
    """
    check_request(request)
    mode = request.get("mode", "collect")
    if mode not in ("collect", "train"):
        raise RequestRefusedError(f"mode {mode!r} is neither 'collect' nor 'train'")
    round_no = _round_of(request, mode, pretrain)
    t0 = time.monotonic()
    tag = safe_name(str(request.get("run-tag", "")), fallback="federation", max_len=48)
    synthetic_name = "default"
    policy = settings.policy()
    if mode == "train":
        if not policy.allow_train:
            raise RequestRefusedError(
                "this site does not train on request (site policy allow_train = false); ask "
                "its admin to train and audit locally, then use mode 'collect'")
        # Resolved first: a bad recipe stops here, not after an hour of GAN training.
        recipe, classes = _baseline_recipe(settings, policy, request)
        synthetic_name = _train_generate_audit(settings, policy, request, tag, log,
                                               pretrain if round_no == 2 else None)
        _ensure_baseline(settings, policy, recipe, classes, log)
        _score_synthetic(settings, recipe, synthetic_name, log)
    from node.export import export_bundle

    # A name of its own per export: the same request asked twice within one second (a
    # restarted coordinator) used to collide with the first bundle and fail.
    out = (settings.site / "exports"
           / f"{tag}-{int(time.time())}-{uuid.uuid4().hex[:8]}.slbundle")
    log(f"{settings.name}: exporting {synthetic_name}")
    manifest = export_bundle(settings.site, out, synthetic_name=synthetic_name,
                             accept_risk=settings.accept_risk or None, site=settings.name,
                             key_dir=settings.keys, lifetime_epsilon=policy.lifetime_epsilon)
    data = out.read_bytes()
    _self_check_bundle(out, settings)
    cfg = _base("export-bundle", settings)
    cfg.update({"bundle-sha256": sha256_bytes(data),
                "bundle-id": str(manifest.get("bundle_id", "")),
                "seconds": round(time.monotonic() - t0, 2)})
    return Reply(cfg, bundle=data).check()


def _self_check_bundle(path: Path, settings: NodeSettings) -> None:
    """Verify our own bundle before sending it: only the bundle format's members can pass."""
    import shutil

    from shared.bundle import BundleError, verify_bundle
    from shared.signing import PUBLIC_NAME

    try:
        with tempfile.TemporaryDirectory(prefix="synthlearn-trust-") as trust:
            # A trust folder as the coordinator keeps it: this site's key under its name.
            shutil.copyfile(settings.keys / PUBLIC_NAME,
                            Path(trust) / f"{safe_name(settings.name)}.pub")
            verify_bundle(path, Path(trust), require_gates=False)
    except BundleError as exc:
        raise RequestRefusedError(f"the bundle this site just wrote does not verify ({exc}); "
                             "not sending it") from None


def check_training_request(policy: SitePolicy, cfg: Any, site_dir: Path,
                           run_name: str | None = None) -> None:
    """Refuse a training request the admin's policy does not allow: DP off where it is
    required, ε above the per-run limit, or ε beyond the site's lifetime budget (not counted
    twice for a DP run ``run_name`` asked for again)."""
    from node.privacy_ledger import check_budget

    if cfg.dp_epsilon is None:
        if policy.require_dp:
            raise RequestRefusedError(
                "this site trains only with differential privacy (site policy require_dp); "
                "the request's gan-config sets no dp_epsilon")
        return
    if cfg.dp_epsilon > policy.max_epsilon_per_run:
        raise RequestRefusedError(
            f"requested ε = {cfg.dp_epsilon:g} is above this site's limit of "
            f"{policy.max_epsilon_per_run:g} per run (site policy max_epsilon_per_run)")
    if run_name and _spent_dp_run(site_dir, run_name):
        return  # asked again: it is done or refused as a DP resume, never trained twice
    check_budget(site_dir, float(cfg.dp_epsilon), policy.lifetime_epsilon)


def _spent_dp_run(site_dir: Path, run_name: str) -> bool:
    """Whether ``runs/<run_name>`` is a DP run that already took steps (its ε is in the
    ledger). Training it again never spends more: :func:`node.training.train` returns it when
    it finished with the same settings and refuses it otherwise (a DP run does not resume)."""
    from node.privacy_ledger import entries
    from node.training.checkpoint import CHECKPOINT_NAME

    if not (site_dir / "runs" / run_name / CHECKPOINT_NAME).exists():
        return False
    return any(e.get("run") == run_name and float(e.get("epsilon") or 0.0) > 0
               for e in entries(site_dir))


def _round_of(request: Mapping[str, Any], mode: str, pretrain: bytes | None) -> int:
    """The request's round (1 or 2), checked against what came with it."""
    raw = request.get("round", 1)
    if raw not in (1, 2) or isinstance(raw, bool):  # True == 1 and 2.0 == 2 are not rounds
        raise RequestRefusedError(f"round {str(raw)[:40]!r} is not 1 or 2")
    round_no = int(raw)
    if round_no == 2 and mode != "train":
        raise RequestRefusedError("a second round trains a new GAN: it needs mode 'train'")
    if round_no == 2 and pretrain is None:
        raise RequestRefusedError("a round-2 request carries no pretraining set ('pretrain')")
    if round_no == 1 and pretrain is not None:
        raise RequestRefusedError("a pretraining set comes only with a round-2 request")
    return round_no


def round2_run_name(tag: str) -> str:
    """The GAN run (and synthetic set) of a round-2 request: round 1's stays as it is."""
    return f"{tag}-round2"


def receive_pretrain_set(settings: NodeSettings, policy: SitePolicy,
                         request: Mapping[str, Any], data: bytes, classes: str,
                         tag: str) -> Path:
    """Check the round-2 pretraining set and keep it at ``SITE/round2-inputs/<tag>/``.

    Everything a hostile coordinator could put in it is checked before anything is written:
    its SHA-256 against the request, its format and size (:func:`shared.pretrain_set.decode`,
    capped by the site policy's ``max_pretrain_images``), and that its classes are this
    site's; images of another size are resized to the store's. The folder stays, so the site
    can see what its round-2 GAN learnt from.
    """
    from node.store import SiteStore
    from shared import pretrain_set
    from shared.errors import SyntheticSetError
    from shared.synthetic import SyntheticSet, resize_u8

    want = str(request.get("pretrain-sha256", ""))
    got = sha256_bytes(data)
    if got != want:
        raise RequestRefusedError(f"the pretraining set has SHA-256 {got}, the request says "
                                  f"{want[:64]!r}; it was changed in transit")
    try:
        images, labels, names = pretrain_set.decode(data,
                                                    max_images=policy.max_pretrain_images)
    except SyntheticSetError as exc:
        raise RequestRefusedError(str(exc)) from None
    store = SiteStore.open(settings.site)
    ours = store.class_names(classes)  # type: ignore[arg-type]
    if names != ours:
        from shared.vocabulary import mismatch

        raise RequestRefusedError(f"pretraining set: "
                                  f"{mismatch(ours, names, 'this site', 'the set')}")
    info: dict[str, Any] = {"source": "round-2 pretraining set from the coordinator",
                            "run_tag": str(request.get("run-tag", ""))[:200], "sha256": want}
    if images.shape[1] != store.size:
        # Bundles hold the generators' output size, which can differ from this site's store
        # (a small store is trained at the 32² minimum; sites' stores may differ): the GAN
        # reads the set as it reads the store, so it is brought to the store's size.
        info["resized_from"] = int(images.shape[1])
        images = resize_u8(images, store.size)
    if len(np.unique(labels)) < 2:
        raise RequestRefusedError("the pretraining set needs images of at least two classes")
    folder = settings.site / "round2-inputs" / tag
    if folder.exists():
        # A repeated request for the same run tag resumes the run that started from this
        # folder: once it has started, the folder is the record of what it learnt from.
        kept = json.loads((folder / "set.json").read_text()).get("info", {}).get("sha256") \
            if (folder / "set.json").exists() else None
        if kept == want:
            return folder
        if (settings.site / "runs" / round2_run_name(tag)).exists():
            raise RequestRefusedError(
                f"run tag {tag!r} already started round 2 from another pretraining set "
                f"(SHA-256 {str(kept)[:16]}…); it would resume, not learn from this one: "
                "use a new run tag")
        import shutil

        shutil.rmtree(folder)
    SyntheticSet(images, labels, names, info=info).save(folder)
    return folder


def _train_generate_audit(settings: NodeSettings, policy: SitePolicy,
                          request: Mapping[str, Any], tag: str, log: Log,
                          pretrain: bytes | None = None) -> str:
    overrides = _json_field(request, "gan-config")
    bad = sorted(FORBIDDEN_GAN_KEYS & set(overrides))
    if bad:
        raise RequestRefusedError(f"gan-config may not set {', '.join(bad)} (a site setting)")
    n = int(request.get("n-synthetic", 200))
    if not 1 <= n <= 200_000:
        raise RequestRefusedError(f"n-synthetic {n} is out of range 1..200000")
    from node.audit import run_audit
    from node.generate import generate
    from node.site_policy import load_audit_config
    from node.training import GanConfig, train
    from node.training.presets import with_preset
    from shared.config import from_mapping

    cfg = from_mapping(GanConfig, with_preset(overrides), source="request gan-config")
    check_training_request(policy, cfg, settings.site,
                           round2_run_name(tag) if pretrain is not None else tag)
    cfg = dataclasses.replace(
        cfg, max_minutes=min(cfg.max_minutes or policy.max_train_minutes,
                             policy.max_train_minutes),
        spine_max_minutes=min(cfg.spine_max_minutes or policy.max_spine_minutes,
                              policy.max_spine_minutes))
    audit_cfg = load_audit_config(settings.site, settings.policy_file or None)
    init_from = None
    if pretrain is not None:
        init_from = receive_pretrain_set(settings, policy, request, pretrain, cfg.classes, tag)
        tag = round2_run_name(tag)
        log(f"{settings.name}: round 2, pretraining on the other sites' synthetic images "
            f"(≤ {cfg.init_pretrain_kimg} kimg)")
    log(f"{settings.name}: training {cfg.model} (≤ {cfg.max_minutes} min, kimg {cfg.kimg})")
    train(settings.site, cfg, run_name=tag, progress=False, init_from=init_from)
    log(f"{settings.name}: generating {n} images")
    generate(settings.site, n, run_name=tag, seed=int(request.get("seed", 0)), out_name=tag)
    log(f"{settings.name}: memorization audit (the admin's gates)")
    run_audit(settings.site, synthetic_name=tag, cfg=audit_cfg, progress=False)
    return tag


def _baseline_recipe(settings: NodeSettings, policy: SitePolicy, request: Mapping[str, Any]
                     ) -> tuple[ClassifierConfig, str]:
    """The recipe (:class:`shared.cnn_train.ClassifierConfig`) of the local real baseline and
    of the GAN-train CNN, and the baseline's classes: the site's own
    (:func:`node.baseline.site_recipe`, the policy file's ``[classifier]``) unless its policy
    says ``baseline_recipe = "request"`` (:class:`node.site_policy.SitePolicy` says why).
    Only ``classes`` is taken from the request either way."""
    from node.baseline import site_recipe
    from shared.cnn_train import ClassifierConfig
    from shared.config import from_mapping

    doc = _json_field(request, "baseline-config")
    classes = str(doc.pop("classes", "binary"))
    if classes not in ("binary", "lesion"):
        raise RequestRefusedError(f"baseline-config classes must be 'binary' or 'lesion', got "
                                  f"{classes!r}")
    if policy.baseline_recipe == "site":
        # The request's recipe is not even parsed: the yardstick is the site's.
        return site_recipe(settings.site, Path(settings.policy_file)
                           if settings.policy_file else None), classes
    return from_mapping(ClassifierConfig, doc, source="request baseline-config"), classes


def _ensure_baseline(settings: NodeSettings, policy: SitePolicy, recipe: ClassifierConfig,
                     classes: str, log: Log) -> None:
    """Train the local real baseline once if the site has none (it is signed at evaluation),
    with ``recipe`` (:func:`_baseline_recipe`) within the admin's time cap.

    Under "site", a baseline on disk whose record does not say ``recipe = "site"`` (trained
    on an earlier request while the admin had said "request", or before records named their
    recipe's owner) is trained again: else a coordinator whose crippled recipe was trained
    once would keep that yardstick for every later run."""
    existing = settings.site / "metrics" / "baseline.json"
    if existing.exists():
        if policy.baseline_recipe != "site" or _recipe_of(existing) == "site":
            return
        log(f"{settings.name}: its local baseline was not trained with its own recipe; "
            "training it again with the site's")
    from node.baseline import run_baseline

    cap = policy.max_baseline_minutes
    cfg = dataclasses.replace(recipe, max_minutes=min(recipe.max_minutes or cap, cap))
    log(f"{settings.name}: local real baseline CNN, the {policy.baseline_recipe}'s recipe "
        f"(≤ {cfg.max_minutes} min)")
    run_baseline(settings.site, cfg, classes=classes, progress=False,
                 recipe=policy.baseline_recipe)


def _baseline_record(path: Path) -> dict[str, Any] | None:
    """The baseline record at ``path`` (unwrapped if it was saved signed); None if it is no
    JSON object. Raises OSError/ValueError when the file cannot be read or parsed."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(doc, dict) and "payload" in doc and "signature" in doc:
        doc = doc["payload"]
    return doc if isinstance(doc, dict) else None


def _recipe_of(path: Path) -> str | None:
    """Who chose the recipe of the baseline record at ``path`` (None: unreadable or unsaid)."""
    try:
        doc = _baseline_record(path)
    except (OSError, ValueError):
        return None
    recipe = doc.get("recipe") if doc is not None else None
    return recipe if isinstance(recipe, str) else None


def _score_synthetic(settings: NodeSettings, recipe: ClassifierConfig, synthetic_name: str,
                     log: Log) -> None:
    """GAN-train / GAN-test / distribution scores on this site's real images, exported (and so
    signed) with the bundle's metrics; the baseline's recipe (:func:`_baseline_recipe`, so its
    owner too) trains the GAN-train CNN, capped at one minute."""
    from node.quality import score_synthetic

    cfg = dataclasses.replace(recipe, max_minutes=min(recipe.max_minutes or 1.0, 1.0))
    log(f"{settings.name}: GAN-train / GAN-test / distribution scores")
    score_synthetic(settings.site, synthetic_name, cfg)


# -- evaluation ------------------------------------------------------------------------------
def load_baseline(settings: NodeSettings, binding: Mapping[str, str] | None = None
                  ) -> dict[str, Any] | None:
    """The site's signed local baseline, or None when it has not run one. ``binding`` (run
    tag and request id) is signed in, so the record cannot be replayed into another run."""
    path = settings.site / "metrics" / "baseline.json"
    if not path.exists():
        return None
    doc = _baseline_record(path)
    if doc is None:
        return None
    return sign_numbers({**doc, **(binding or {})}, settings)


def _check_weights_meta(path: Path, role: str) -> None:
    """Refuse weights whose metadata try to choose what only the site chooses: a decision
    threshold (which would turn the reply into an oracle on the real test images at the
    coordinator's operating point). The architecture bounds and the npz size caps are
    checked by :func:`shared.weights_io.load_weights` and ``load_classifier``."""
    from shared.weights_io import load_weights

    _, meta = load_weights(path)
    if meta.get("threshold") is not None:
        raise RequestRefusedError(
            f"{role} weights carry a decision threshold ({meta.get('threshold')!r}) in their "
            "metadata; this site uses its own threshold (site policy eval_threshold), never "
            "the coordinator's")


def evaluate_documents(settings: NodeSettings, request: Mapping[str, Any],
                       weights: Mapping[str, Path]) -> dict[str, Any]:
    """Evaluate each weights file on the real test split; the signed reply document.

    ``weights`` maps a role ("pooled", "own") to an npz file whose SHA-256 must equal the one
    the request names (so the numbers are bound to exactly the weights the coordinator sent).
    Every signed record carries the request id and run tag. The request is checked against
    the site policy (replay, evaluations per run and per day) and logged either way
    (:mod:`node.evaluation_log`).
    """
    from node import evaluation_log

    check_request(request)
    policy = settings.policy()
    try:
        doc = _evaluate(settings, policy, request, weights)
    except RequestRefusedError as exc:
        evaluation_log.append(settings.site, request, "refused", scrub_paths(str(exc)))
        raise
    except Exception as exc:
        # Logged and counted like an answer: the weights were run on real images, and a
        # crash the coordinator can provoke on some images only is itself an answer.
        evaluation_log.append(settings.site, request, "failed",
                              scrub_paths(f"{type(exc).__name__}: {exc}")[:500])
        raise
    evaluation_log.append(settings.site, request, "answered")
    return doc


def _evaluate(settings: NodeSettings, policy: SitePolicy, request: Mapping[str, Any],
              weights: Mapping[str, Path]) -> dict[str, Any]:
    from node import evaluation_log
    from node.evaluate import evaluate_weights
    from shared.files import sha256_file
    from shared.weights_io import WeightsError

    evaluation_log.check_allowed(settings.site, request,
                                 per_run=policy.max_evaluations_per_run,
                                 per_day=policy.max_evaluations_per_day)
    expected = {"pooled": request.get("weights-sha256"),
                "own": request.get("own-weights-sha256")}
    n_boot = int(request.get("n-boot", 1000))
    if not 100 <= n_boot <= 100_000:
        raise RequestRefusedError(f"n-boot {n_boot} is out of range 100..100000")
    binding = {"request_id": str(request.get("request-id", ""))[:200],
               "run_tag": str(request.get("run-tag", ""))[:200]}
    evaluations: dict[str, Any] = {}
    for role, path in weights.items():
        if role not in expected:
            raise RequestRefusedError(f"unknown weights role {role!r}")
        digest = sha256_file(path)
        if expected[role] and digest != expected[role]:
            raise RequestRefusedError(f"{role} weights have SHA-256 {digest}, the request says "
                                 f"{expected[role]}; the file was changed in transit")
        try:
            _check_weights_meta(path, role)
            # The paired test answers "does this site gain by joining": pooled vs local.
            record = evaluate_weights(settings.site, path, n_boot=n_boot,
                                      threshold=policy.eval_threshold,
                                      threshold_from_meta=False,
                                      compare_local=role == "pooled",
                                      max_candidates=policy.max_candidates,
                                      batchnorm=policy.batchnorm)
        except WeightsError as exc:
            raise RequestRefusedError(f"{role} weights refused: {exc}") from None
        record.update(role=role, **binding)
        evaluations[role] = sign_numbers(record, settings)
    return {"protocol": PROTOCOL, "site": settings.name, **binding,
            "evaluations": evaluations, "baseline": load_baseline(settings, binding)}


def handle_evaluate(settings: NodeSettings, request: Mapping[str, Any],
                    weights: Mapping[str, bytes]) -> Reply:
    """Flower path: weights arrive as bytes; they are evaluated from a private temp folder."""
    t0 = time.monotonic()
    check_request(request)
    with tempfile.TemporaryDirectory(prefix="synthlearn-eval-") as tmp:
        paths: dict[str, Path] = {}
        for role, data in weights.items():
            path = Path(tmp) / f"{safe_name(role, fallback='weights')}.npz"
            path.write_bytes(data)
            paths[role] = path
        doc = evaluate_documents(settings, request, paths)
    cfg = _base("evaluate", settings)
    cfg["reply-json"] = json.dumps(doc, sort_keys=True)
    cfg["seconds"] = round(time.monotonic() - t0, 2)
    return Reply(cfg).check()


def answer_request_file(request_file: Path, site_dir: Path, out: Path | None = None,
                        key_dir: Path | None = None,
                        policy_file: Path | None = None) -> Path:
    """Air-gapped path: answer ``request.json`` (weights beside it) with a signed reply file.

    ``policy_file`` is the admin's policy TOML when it is not ``SITE/site.toml`` (what
    ``node join --policy`` passes as node config): the same limits as over Flower."""
    from shared.files import atomic_write_bytes

    request_file = Path(request_file)
    try:
        doc = loads_untrusted(request_file.read_bytes())
    except (OSError, UntrustedJSONError) as exc:
        raise RequestRefusedError(
            f"{request_file}: not a readable evaluation request ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("request"), dict):
        raise RequestRefusedError(f"{request_file}: no 'request' object; use the file the "
                             "coordinator wrote (`synthlearn coordinator train`)")
    files = doc.get("weights", {})
    if not isinstance(files, dict):
        raise RequestRefusedError(f"{request_file}: 'weights' must map role → file name")
    weights: dict[str, Path] = {}
    for role, name in files.items():
        path = request_file.parent / Path(str(name)).name  # never outside the request folder
        if not path.is_file():
            raise RequestRefusedError(f"{path}: weights file named by the request is missing")
        weights[str(role)] = path
    settings = NodeSettings(site_dir=str(site_dir), key_dir=str(key_dir or ""),
                            policy_file=str(policy_file or ""))
    reply = evaluate_documents(settings, doc["request"], weights)
    out = out or request_file.parent / f"reply-{safe_name(settings.name)}.json"
    atomic_write_bytes(out, (json.dumps(reply, indent=2, sort_keys=True) + "\n").encode())
    return out
