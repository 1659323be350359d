"""Unit tests of the metrics, the --classes parser and the atomic writer, on hand-made values."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from evaluate.errors import InputError
from evaluate.metrics import (
    case_insensitive_accuracy,
    confusion_matrix,
    most_confused,
    per_class_scores,
    softmax_confidence,
    top_k_accuracy,
    worst_classes,
)
from evaluate.model_spec import parse_class_names
from evaluate.outputs import atomic_path

LOGITS = np.array(
    [
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 0: top-1
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 1: top-2
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: outside the top 5
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 1: top-5
    ]
)
LABELS = np.array([0, 1, 5, 1])


def test_top1_accuracy():
    assert top_k_accuracy(LOGITS, LABELS, 1) == pytest.approx(0.25)


def test_top5_accuracy():
    assert top_k_accuracy(LOGITS, LABELS, 5) == pytest.approx(0.75)


def test_top_k_capped_at_class_count():
    logits = np.array([[0.0, 1.0, 2.0]])
    assert top_k_accuracy(logits, np.array([0]), 5) == 1.0


def test_top1_breaks_ties_like_argmax():
    # Every row ties classes 1 and 3. Argmax picks 1, so top-1 must count label 1 right and label 3 wrong.
    logits = np.tile(np.array([[0.0, 2.0, 0.0, 2.0]], dtype=np.float32), (40, 1))
    labels = np.array([1, 3] * 20)
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(float((logits.argmax(axis=1) == labels).mean()))
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(0.5)


def test_case_insensitive_accuracy_forgives_case():
    names = ["C", "O", "c", "o", "0"]
    labels = np.array([0, 1, 2, 3, 4])
    predictions = np.array([2, 3, 0, 4, 1])  # c for C, o for O, C for c, 0 for o, O for 0

    assert case_insensitive_accuracy(predictions, labels, names) == pytest.approx(3 / 5)
    assert (predictions == labels).mean() == 0.0


def test_confusion_matrix_rows_are_true_classes():
    confusion = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])


def test_per_class_scores():
    confusion = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 4)
    scores = per_class_scores(confusion, ["a", "b", "c", "d"])

    assert scores[0].precision == 1.0
    assert scores[0].recall == 0.5
    assert scores[0].f1 == pytest.approx(2 / 3)
    assert scores[1].precision == pytest.approx(1 / 3)
    assert scores[1].recall == 1.0
    assert scores[1].f1 == pytest.approx(0.5)
    # c occurs once and is never predicted; d neither occurs nor is predicted.
    assert scores[2].precision is None
    assert scores[2].recall == 0.0
    assert scores[2].f1 == 0.0
    assert scores[3].precision is None
    assert scores[3].recall is None
    assert scores[3].f1 is None


def test_worst_classes_skips_absent_classes():
    confusion = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 4)
    ranked = worst_classes(per_class_scores(confusion, ["a", "b", "c", "d"]))
    assert [score.name for score in ranked] == ["c", "b", "a"]


def test_most_confused_orders_by_count():
    confusion = np.array([[5, 3, 1], [0, 5, 3], [2, 0, 5]])
    pairs = most_confused(confusion, ["x", "y", "z"], 3)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("x", "y", 3), ("y", "z", 3), ("z", "x", 2)]


def test_softmax_confidence_of_logits():
    confidence = softmax_confidence(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
    np.testing.assert_allclose(confidence, [0.5, 0.75], rtol=1e-6)


def test_softmax_confidence_keeps_probabilities():
    confidence = softmax_confidence(np.array([[0.2, 0.8], [0.6, 0.4]]))
    np.testing.assert_allclose(confidence, [0.8, 0.6], rtol=1e-6)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0123", ["0", "1", "2", "3"]), ("cat, dog ,bird", ["cat", "dog", "bird"]), ("A", ["A"])],
)
def test_parse_class_names(value, expected):
    assert parse_class_names(value) == expected


def test_parse_class_names_from_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("zero\none\n\ntwo\n")
    assert parse_class_names(str(path)) == ["zero", "one", "two"]


def test_parse_class_names_rejects_repeats():
    with pytest.raises(InputError, match="appear more than once"):
        parse_class_names("a,b,a")


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")

    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_path_replaces_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with atomic_path(target) as temporary:
        temporary.write_text("new")

    assert target.read_text() == "new"
    assert Path(target).stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
