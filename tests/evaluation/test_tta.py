"""Test-time augmentation against the model run by hand on channel-swapped and mirrored inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avsc_pipeline.dataio.dataset import ShardDataset
from avsc_pipeline.evaluation.evaluate import evaluate_model
from avsc_pipeline.evaluation.output_file import read_predictions
from avsc_pipeline.evaluation.loading import load_scorer
from avsc_pipeline.evaluation.tta import TTAScorer, parse_tta
from avsc_pipeline.sections.features import FeatureConfig
from avsc_pipeline.storage.index import build_index
from avsc_pipeline.testing import write_random_shard, write_test_checkpoint

FEATURES = FeatureConfig(image_size=32)
# [L, dL, ddL, R, dR, ddR] -> [R, dR, ddR, L, dL, ddL]: each feature kind's left and right exchanged.
SWAPPED = [3, 4, 5, 0, 1, 2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    split = root / "evaluate"
    write_random_shard(split / "shard-00000.h5", 10, FEATURES, seed=0)
    build_index(split)
    joint = write_test_checkpoint(root / "joint" / "best.pt", split, seed=1)
    audio = write_test_checkpoint(root / "audio" / "best.pt", split, modality="audio", seed=2)
    with ShardDataset([split]) as dataset:
        batch = dataset.read_batch(range(5), audio_float32=False)
    return split, joint, audio, batch


def by_hand(scorer, batch, swap=False, flip=False):
    variant = dict(batch)
    if swap:
        variant["audio"] = torch.from_numpy(batch["audio"].numpy()[:, SWAPPED].copy())
    if flip:
        variant["video"] = torch.from_numpy(batch["video"].numpy()[..., ::-1].copy())
    return scorer.probabilities(variant).numpy()


def test_swap_flip_and_both_are_means_over_hand_made_variants(setup):
    _, joint, _, batch = setup
    scorer, _ = load_scorer(joint, "cpu")
    before = {key: batch[key].clone() for key in ("audio", "video")}
    plain = by_hand(scorer, batch)
    swapped, flipped = by_hand(scorer, batch, swap=True), by_hand(scorer, batch, flip=True)
    both = by_hand(scorer, batch, swap=True, flip=True)
    assert np.abs(swapped - plain).max() > 1e-3 and np.abs(flipped - plain).max() > 1e-3  # the variants differ
    cases = {("swap",): (plain + swapped) / 2, ("flip",): (plain + flipped) / 2,
             ("swap", "flip"): (plain + swapped + flipped + both) / 4}
    for transforms, expected in cases.items():
        got = TTAScorer(scorer, transforms).probabilities(batch).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    calibrated, uncalibrated = TTAScorer(scorer, ["swap"]).probability_pair(batch)
    np.testing.assert_allclose(calibrated.numpy(), cases[("swap",)], rtol=0, atol=1e-12)
    assert uncalibrated.shape == calibrated.shape
    assert all(torch.equal(batch[key], before[key]) for key in before)  # the batch itself is left as it was


def test_parse_tta_and_refusals(setup):
    _, _, audio, _ = setup
    assert parse_tta(["flip,swap"]) == parse_tta(["swap", "flip", "swap"]) == ("swap", "flip")
    assert parse_tta(()) == ()
    with pytest.raises(ValueError, match="--tta: expected transforms among swap, flip, got mirror"):
        parse_tta("swap,mirror")
    scorer, _ = load_scorer(audio, "cpu")
    with pytest.raises(ValueError, match="--tta flip: expected a model that reads frames"):
        TTAScorer(scorer, ["flip"])
    with pytest.raises(ValueError, match="at least one"):
        TTAScorer(scorer, [])


def test_evaluation_with_tta_writes_its_own_folder(setup):
    split, joint, _, batch = setup
    result = evaluate_model([joint], split, tta=["swap"], batch_size=4, progress=False)
    out = joint.parent / "eval" / "evaluate-tta-swap"
    assert result["tta"] == ["swap"] and json.loads((out / "metrics.json").read_text())["tta"] == ["swap"]
    scorer, _ = load_scorer(joint, "cpu")
    expected = (by_hand(scorer, batch) + by_hand(scorer, batch, swap=True)) / 2
    np.testing.assert_allclose(read_predictions(out / "predictions.tsv")[2][:5], expected, rtol=0, atol=1e-6)
