"""The shipped DGA model against the issue's targets on the held-out set scripts/train_dga.py describes.

The held-out names (2025 seeds of the six families, the benign half not trained on) are rebuilt from the
training script and the corpus in the repository, so these figures are the ones the data file's header states.
"""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path
from types import ModuleType

import pytest

from ztdns.config.detect import DgaConfig
from ztdns.detect.dga import UNDECIDED, ngrams, shipped_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_dga.py"


@pytest.fixture(scope="module")
def training() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_dga", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_auc_recall_and_false_positives_meet_the_targets(training: ModuleType) -> None:
    model = shipped_model()
    threshold = DgaConfig().threshold
    _, benign = training.split_benign(*training.benign_labels())
    negatives = [model.score(label) for label in benign]
    positives = [model.score(name) for names in training.dga_names(2025, 800, 20).values() for name in names]
    assert training.auc(positives, negatives) >= 0.97
    recall = sum(score >= threshold for score in positives) / len(positives)
    false_positives = sum(score >= threshold for score in negatives) / len(negatives)
    assert recall >= 0.8
    assert false_positives <= 0.004  # the bound is 0.5 %: the default threshold keeps a margin


def test_short_labels_are_undecided() -> None:
    model = shipped_model()
    assert model.min_length > 3
    for label in ("qq", "xcb", "nfkc", "qzxjv"[: model.min_length - 1]):
        assert model.score(label) <= UNDECIDED
    assert model.score("xjkqwhdkfjqwe") > DgaConfig().threshold


def test_the_scoring_fast_path_sums_the_documented_features() -> None:
    model = shipped_model()
    generator = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_\xff"
    for _ in range(500):
        label = "".join(generator.choice(alphabet) for _ in range(generator.randint(model.min_length, 63)))
        grams = ngrams(label)
        z = model.bias + sum(model.weights.get(gram, 0.0) for gram in grams) / math.sqrt(len(grams))
        assert model.score(label) == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-9)
