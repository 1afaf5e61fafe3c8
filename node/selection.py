"""Choose among the coordinator's candidate CNNs with this site's real *train* split.

Why at the site: the coordinator's CNN learns from synthetic images only, and on its own
synthetic validation images every epoch of every seed scores AUC ≈ 1.0, so nothing the
coordinator holds tells which of them transfer to real radiographs. Which ones do varied by
0.1-0.2 AUC between seeds of one pool (BENCHMARKS.md § The coordinator's CNN on the demo's
pools). A site's real train split can tell, and the test split that the evaluation reports
stays untouched by the choice. (The train split is not held out from the candidates in every
sense: the pool holds this site's own synthetic images, made by a GAN trained on that split,
so the choice leans towards candidates that fit them; the test split is what stays held
out, and it is scored once, after the choice.) So the coordinator sends K candidate
networks (CNN seeds × epochs, :func:`shared.weights_io.save_candidates`) and each site keeps
the ensemble that scores best on its own train split — the same images its local real CNN
trained on, so the paired comparison with that CNN stays fair.

The rule is greedy forward selection with replacement (Caruana et al., "Ensemble selection
from libraries of models", ICML 2004): start empty, repeatedly add the candidate whose
addition gives the highest train-split AUC of the mean probability, stop when no addition
improves it or after :data:`MAX_PICKS` picks. Only the picked indices and counts leave the
site (inside the signed evaluation record); the train-split AUC and every per-image score stay
here: each reported number about the train split is a few more bits a crafted candidate set
could ask about it (SECURITY.md § Site policy). At most :data:`MAX_SELECTION_IMAGES` train
images are scored (a stratified sample beyond that), so the work a coordinator can ask for is
bounded whatever the split's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

MAX_PICKS = 5
"""Most picks in the ensemble (with repetition): more overfits a small train split."""
MAX_SELECTION_IMAGES = 2000
"""Most train images the candidates are scored on (a stratified, seeded sample beyond)."""
MIN_PER_CLASS = 5
"""A train split with fewer images than this of a class it holds, or with fewer than two
classes, cannot rank candidates; the coordinator's default is used instead, and the record
says why. A class of the list the site has no image of does not count (lesion mode: few sites
hold every class; the macro AUC averages the classes present, as on the test split)."""
MIN_ADAPT_IMAGES = 32
"""Fewest train images whose BatchNorm statistics replace the sender's (:func:`adapt_to_site`)."""
RULE = ("greedy forward selection with replacement (Caruana 2004), ≤ 5 picks, on the site's "
        "real train split")


class MeanEnsemble(torch.nn.Module):
    """Networks whose softmax probabilities are averaged: returns the log of the mean, so
    ``softmax(forward(x))`` is the mean probability (what :func:`predict_scores` reports)."""

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one network")
        self.members = torch.nn.ModuleList(members)
        self.num_classes = int(getattr(members[0], "num_classes", 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([_no_opinion_where_undefined(torch.softmax(m(x).float(), 1))
                             for m in self.members]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


def _no_opinion_where_undefined(probs: torch.Tensor) -> torch.Tensor:
    """Rows a network left undefined (NaN: a logit overflowed) become uniform ("no opinion").

    Why not refuse the weights instead: the coordinator chooses the weights, so it can make
    them overflow on some images only (say, on one patient's radiograph). A refusal or crash
    would then answer "is that image in this split?" outside the evaluation limits, which
    count answered requests; a uniform row only moves the AUC the record reports.
    """
    bad = ~torch.isfinite(probs).all(1, keepdim=True)
    return torch.where(bad, torch.full_like(probs, 1.0 / probs.shape[1]), probs)


def choose(scores: list[npt.NDArray[np.float64]], labels: npt.NDArray[np.int64],
           max_picks: int = MAX_PICKS) -> tuple[list[int], float]:
    """(picked candidate indices, in pick order with repeats; the ensemble's train AUC).

    ``scores[i]`` are candidate i's probabilities (N, classes) on the train split. Ties go to
    the lower index, so the choice is deterministic.
    """
    from shared.metrics.auc import class_auc

    if not scores:
        raise ValueError("no candidates to choose from")
    picks: list[int] = []
    total = np.zeros_like(scores[0])
    best = -np.inf
    for _ in range(max_picks):
        trial = [class_auc(labels, (total + s) / (len(picks) + 1)) for s in scores]
        i = int(np.argmax(trial))
        if trial[i] <= best + 1e-9:
            break
        best = float(trial[i])
        picks.append(i)
        total = total + scores[i]
    return picks, best


BATCHNORM = {
    "sent": "the candidates as sent",
    "site": "every candidate with BatchNorm statistics of the site's train images "
            "(adapt_to_site)",
    "either": "each candidate as sent and adapted, the choice picking among both",
}
"""How :func:`select_on_train` treats the candidates' BatchNorm statistics.

"either" is the product's (:data:`DEFAULT_BATCHNORM`; the site policy's ``batchnorm`` may
say "sent"); "site" is a lever the benchmarks measure and did not keep (BENCHMARKS.md §
BatchNorm statistics from the site's own images; § Choosing among sent and adapted
candidates). Why "either" and not "site": adaptation lifts some candidates and sinks others
(at one DP seed it cost the best candidates 0.04-0.09 AUC at a site), and only the site's
train split can tell which; "either" lets that split choose per candidate. The adapted
copies are normalised on the very train images the choice then scores them on (no labels
are used for that, but it can tilt a small split's choice towards them), and the choice
scores up to twice as many networks as were sent (the work stays bounded: ≤ 2 × the policy's
``max_candidates`` networks on ≤ :data:`MAX_SELECTION_IMAGES` images)."""
DEFAULT_BATCHNORM = "either"
"""The site's default (``SitePolicy.batchnorm``)."""


def select_on_train(models: Sequence[torch.nn.Module], default: list[int],
                    images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64],
                    batchnorm: str = DEFAULT_BATCHNORM) -> tuple[MeanEnsemble, dict[str, Any]]:
    """The ensemble this site evaluates, and the record of how it was chosen.

    ``images``/``labels``: the site's real train split, already at the CNN's input size.
    With a train split that cannot rank them (:data:`MIN_PER_CLASS`) the sender's
    ``default`` is used (adapted under "site", as sent under "either": there is no choice to
    make). ``batchnorm``: a key of :data:`BATCHNORM`. Under "either" the record's ``picked``
    still names the sender's candidates, ``adapted`` says for each pick whether its adapted
    copy was the one taken, and ``distinct`` counts networks (an adapted copy apart from its
    original).
    """
    from shared.cnn_train import predict_scores

    if batchnorm not in BATCHNORM:
        raise ValueError(f"batchnorm={batchnorm!r}: expected one of {', '.join(BATCHNORM)}")
    k = len(models)
    keep = sample_for_selection(labels)
    images, labels = images[keep], labels[keep]
    record: dict[str, Any] = {"candidates": k, "split": "train", "n_images": len(labels)}
    n_classes = int(getattr(models[0], "num_classes", 2))
    per_class = np.bincount(labels, minlength=n_classes) if len(labels) else np.zeros(n_classes)
    present = per_class[per_class > 0]
    if len(present) < 2 or int(present.min()) < MIN_PER_CLASS:
        members = [models[i] for i in default]
        if batchnorm == "site":  # only the members used are adapted
            members, record["batchnorm"] = adapt_to_site(members, images)
        return MeanEnsemble(members), {
            **record, "split": None, "picked": list(default),
            "rule": f"the coordinator's default: the train split has fewer than two classes "
                    f"or fewer than {MIN_PER_CLASS} images of one ({per_class.tolist()})"}
    pool, origin = list(models), [(i, False) for i in range(k)]
    if batchnorm != "sent":
        adapted, record["batchnorm"] = adapt_to_site(models, images)
        if batchnorm == "site":
            pool = adapted
        else:  # both; a copy that kept the sender's statistics would only repeat its original
            extra = [i for i in range(k) if adapted[i] is not models[i]]
            pool += [adapted[i] for i in extra]
            origin += [(i, True) for i in extra]
    scores = [_no_opinion_where_undefined(torch.from_numpy(predict_scores(m, images))).numpy()
              for m in pool]
    picks, _train_auc = choose(scores, labels)  # the AUC stays here (module docstring)
    picked = [origin[j][0] for j in picks]
    if batchnorm == "either":
        record["adapted"] = [origin[j][1] for j in picks]
    return MeanEnsemble([pool[j] for j in picks]), {
        **record, "picked": picked, "distinct": len(set(picks)), "rule": RULE}


def adapt_to_site(models: Sequence[torch.nn.Module], images: npt.NDArray[np.uint8]
                  ) -> tuple[list[torch.nn.Module], str]:
    """(the candidates with BatchNorm statistics of this site's real images, what was done).

    Why: the coordinator's CNNs learned from synthetic images only, and each BatchNorm layer
    normalises with the synthetic images' means and variances. Re-estimated on the site's
    own real train images (AdaBN, Li et al. 2016; images only, no labels), the layers see
    real radiographs the way they saw synthetic ones in training. The learned weights are
    untouched, the adapted copies never leave the site, and the test split is not used. The
    statistics are still computed from the train split, so a crafted candidate can make its
    test scores depend on them, a channel like the one the choice opens (SECURITY.md §
    Choosing among candidate CNNs). The product offers the adapted copies next to the sent
    ones (:data:`BATCHNORM` "either"); replacing the sent ones ("site") was not kept.
    Fewer than :data:`MIN_ADAPT_IMAGES` images would give noisy statistics: the sender's are
    kept then.
    """
    from shared.cnn_train import adapt_batchnorm

    if len(images) < MIN_ADAPT_IMAGES:
        return list(models), (f"the sender's: fewer than {MIN_ADAPT_IMAGES} train images "
                              f"({len(images)})")
    has_bn = [any(isinstance(b, torch.nn.modules.batchnorm._BatchNorm) for b in m.modules())
              for m in models]
    out: list[torch.nn.Module] = []
    for m, bn in zip(models, has_bn, strict=True):
        if not bn:
            out.append(m)  # nothing to re-estimate: the sender's network itself
            continue
        a = adapt_batchnorm(m, images)
        # One overflowing image makes a BatchNorm's statistics undefined for every image: such
        # a candidate keeps the sender's statistics (and its per-image "no opinion" rows).
        finite = all(torch.isfinite(b).all() for b in a.buffers() if b.is_floating_point())
        out.append(a if finite else m)
    # The text depends on the architectures and the count only: which candidates overflowed
    # is data-dependent, and the record is signed and sent.
    if not any(has_bn):
        return out, "the sender's: no candidate has BatchNorm statistics to re-estimate"
    return out, f"re-estimated on {len(images)} train images"


def sample_for_selection(labels: npt.NDArray[np.int64],
                         cap: int = MAX_SELECTION_IMAGES) -> npt.NDArray[np.int64]:
    """Indices of at most ``cap`` train images, each class in its share (seeded: the same
    split gives the same sample); all of them when the split is no larger.

    At most ``cap`` exactly (rounded shares can add up to more; the largest classes give the
    surplus back), so sampling an already sampled split is the identity: the site samples
    before resizing (:func:`node.evaluate.choose_on_train_split`) and :func:`select_on_train`
    samples again for its other callers."""
    if len(labels) <= cap:
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    classes, counts = np.unique(labels, return_counts=True)
    take = np.maximum(1, np.round(cap * counts / len(labels)).astype(np.int64))
    for i in np.argsort(-take)[: max(0, int(take.sum()) - cap)]:
        take[i] -= 1
    out = [rng.choice(np.flatnonzero(labels == c), size=int(min(t, n)), replace=False)
           for c, t, n in zip(classes, take, counts, strict=True)]
    return np.sort(np.concatenate(out))
