"""Post-processing: probabilities to labelled top-k."""

from __future__ import annotations

import numpy as np

from imgserve.serving.predict import top_k

LABELS = ["a", "b", "c", "d"]


def test_top_k_is_sorted_highest_first_with_labels():
    probs = np.array([0.1, 0.6, 0.05, 0.25], dtype=np.float32)
    assert top_k(probs, LABELS, 3) == [
        {"label": "b", "score": np.float32(0.6)},
        {"label": "d", "score": np.float32(0.25)},
        {"label": "a", "score": np.float32(0.1)},
    ]


def test_top_k_never_returns_more_than_the_classes():
    probs = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    assert [p["label"] for p in top_k(probs, LABELS, 10)] == ["d", "c", "b", "a"]
