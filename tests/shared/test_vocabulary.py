"""The lesion vocabulary: fixed ids, the spellings it accepts and the ones it refuses to guess."""

from __future__ import annotations

import pytest

from shared.vocabulary import (
    BINARY_CLASSES,
    LESION_CLASSES,
    canonical,
    class_id,
    class_ids,
    class_mode,
    mismatch,
)


def test_ids_are_fixed_in_vindr_spinexr_order() -> None:
    # Changing this list would relabel every bundle and weights file already made.
    assert LESION_CLASSES == ("No finding", "Disc space narrowing", "Foraminal stenosis",
                              "Osteophytes", "Spondylolisthesis", "Surgical implant",
                              "Vertebral collapse", "Other lesions")
    assert class_id("Vertebral collapse") == 6
    assert class_ids(LESION_CLASSES) == list(range(8))
    assert class_ids(BINARY_CLASSES) == [0, 1]
    assert class_ids(["No finding", "Pneumonia"]) is None  # a site-defined list


@pytest.mark.parametrize(("word", "name"), [
    ("No finding", "No finding"), ("no_finding", "No finding"), ("NO FINDINGS", "No finding"),
    ("Normal", "No finding"), ("Disc Space Narrowing", "Disc space narrowing"),
    ("disk-space-narrowing", "Disc space narrowing"), ("  foraminal   stenosis ",
                                                        "Foraminal stenosis"),
    ("osteophyte", "Osteophytes"), ("OSTEOPHYTES", "Osteophytes"),
    ("spondylolisthesis", "Spondylolisthesis"), ("surgical implants", "Surgical implant"),
    ("Vertebral_Collapse", "Vertebral collapse"), ("other lesion", "Other lesions"),
])
def test_common_spellings_name_one_class(word: str, name: str) -> None:
    assert canonical(word) == name


@pytest.mark.parametrize("word", ["DSN", "Fracture vertébrale", "Pneumonia", "lesion",
                                  "Abnormal", "1", "", "Osteophytes; Disc space narrowing"])
def test_anything_else_is_not_guessed(word: str) -> None:
    assert canonical(word) is None


def test_binary_mode_derives_from_the_vocabulary() -> None:
    assert class_mode(BINARY_CLASSES) == "binary"
    assert class_mode(LESION_CLASSES) == "lesion"
    assert class_mode(["No finding", "Pneumonia"]) == "lesion"  # two classes, not binary


def test_a_mismatch_message_gives_both_lists_with_ids() -> None:
    site = ["No finding", "Vertebral collapse", "Other lesions"]
    msg = mismatch(LESION_CLASSES, site, "this site", "the weights")
    assert msg is not None
    assert "the weights has [No finding, Vertebral collapse, Other lesions]" in msg
    assert "this site has [0:No finding, 1:Disc space narrowing" in msg and "7:Other lesions" in msg
    assert mismatch(LESION_CLASSES, list(LESION_CLASSES), "a", "b") is None


def test_the_phantom_renderer_draws_vocabulary_classes_only() -> None:
    from node.phantoms import LESION_CLASSES as PHANTOM

    assert set(PHANTOM) <= set(LESION_CLASSES)
