"""The lesion vocabulary: the one registry of class names and their fixed ids.

Both sides need it. A node turns the words of its label sheet into these names; every
bundle, the pooled set, the CNN's weights and every evaluation record carry the names (and
their ids); the coordinator and the sites refuse to mix two different class lists, with both
lists in the message. Without fixed ids, "class 2" at one site and "class 2" at another are
whatever each label sheet sorted into that place (issue 15: weights trained on one class list
were scored at a site with another, and nothing complained).

Class lists (what ``class_names`` holds everywhere):

* **binary**: ``["normal", "abnormal"]``: id 0 is "No finding", id 1 is any lesion; derived
  from the vocabulary (:func:`binary_label`), whatever lesion a row names.
* **lesion**: the whole :data:`LESION_CLASSES` list, ids 0..7, at *every* site, whether or not
  the site has each class. A site that lacks a class keeps its id and name; its count is zero,
  its GAN draws none of it, and its evaluation reports it as absent (never as an AUC of 0).
  So two VinDr sites always agree on the list, and a class only one site has still reaches
  the pooled CNN under the same id.
* **site-defined**: a store holding names outside the vocabulary (a research import such as
  PneumoniaMNIST's "Pneumonia") keeps its own list ("No finding" first, the rest sorted);
  such lists carry no vocabulary ids, and only identical lists can be pooled or evaluated.

Spellings (:func:`canonical`): case, surrounding/inner whitespace, ``_`` and ``-`` are
ignored, a plural ``s`` is optional ("osteophyte" = "Osteophytes", "no_finding" =
"No finding"), "disk" = "disc", and a few unambiguous synonyms are accepted ("normal",
"no findings", "other lesion"). Anything else — abbreviations ("DSN"), other languages,
other findings — is not guessed: a site maps it in its ``label-map.csv``
(:mod:`node.labels`).

>>> canonical("  disc_space-NARROWING "), canonical("osteophyte"), canonical("DSN")
('Disc space narrowing', 'Osteophytes', None)
>>> class_ids(LESION_CLASSES)[3], class_ids(BINARY_CLASSES), class_ids(["No finding", "x"])
(3, [0, 1], None)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

VOCABULARY = "vindr-spinexr/1"
"""Name and version of the class list below; bundles and weights say which one they use."""

NORMAL = "No finding"

LESION_CLASSES: tuple[str, ...] = (
    NORMAL,                   # 0
    "Disc space narrowing",   # 1
    "Foraminal stenosis",     # 2
    "Osteophytes",            # 3
    "Spondylolisthesis",      # 4
    "Surgical implant",       # 5
    "Vertebral collapse",     # 6
    "Other lesions",          # 7
)
"""VinDr-SpineXR's classes; the position is the class id. Append only: never reorder."""

BINARY_CLASSES: tuple[str, ...] = ("normal", "abnormal")
"""The binary class list: id 0 = "No finding", id 1 = any lesion."""

_SYNONYMS = {
    "normal": NORMAL,
    "no abnormality": NORMAL,
    "disk space narrowing": "Disc space narrowing",
    "other": "Other lesions",
}


def _key(text: str) -> str:
    """Case, ``_``/``-`` and whitespace folded; a trailing plural ``s`` of each word dropped."""
    words = re.sub(r"[\s_\-]+", " ", text.strip().lower()).split()
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("sis") else w
                    for w in words)


_INDEX = {_key(n): n for n in LESION_CLASSES} | {_key(k): v for k, v in _SYNONYMS.items()}


def canonical(label: str) -> str | None:
    """The vocabulary name ``label`` spells, or None when it is not one (see module doc)."""
    return _INDEX.get(_key(label))


def spelling_key(label: str) -> str:
    """The folded form :func:`canonical` matches on (site label maps use it too)."""
    return _key(label)


def class_id(name: str) -> int:
    """Fixed id of a vocabulary name (exact spelling); ValueError for any other name."""
    return LESION_CLASSES.index(name)


def binary_label(lesion: str) -> int:
    """VinDr convention: "No finding" is normal (0); any other lesion is abnormal (1)."""
    return 0 if lesion == NORMAL else 1


def class_ids(names: Sequence[str]) -> list[int] | None:
    """Vocabulary ids of a class list, or None for a site-defined list (module docstring)."""
    names = list(names)
    if names == list(BINARY_CLASSES):
        return [0, 1]
    if names == list(LESION_CLASSES):
        return list(range(len(LESION_CLASSES)))
    return None


def class_mode(names: Sequence[str]) -> str:
    """'binary' for the binary list, else 'lesion' (the vocabulary or a site-defined list)."""
    return "binary" if list(names) == list(BINARY_CLASSES) else "lesion"


def describe(names: Sequence[str]) -> str:
    """A class list for a message: names with their ids, or "site-defined" without."""
    ids = class_ids(names)
    if ids is None:
        return f"[{', '.join(names)}] (site-defined, no vocabulary ids)"
    return "[" + ", ".join(f"{i}:{n}" for i, n in zip(ids, names, strict=True)) + "]"


def mismatch(ours: Sequence[str], theirs: Sequence[str], our_side: str,
             their_side: str) -> str | None:
    """None when the two class lists are the same list; else one line giving both."""
    if list(ours) == list(theirs):
        return None
    return (f"class lists differ: {their_side} has {describe(theirs)}, {our_side} has "
            f"{describe(ours)}")
