"""The soft-target loss against torch's cross-entropy."""

import pytest
import torch
import torch.nn.functional as F

from avsc_pipeline.dataio.batch_augment import one_hot
from avsc_pipeline.training.losses import SoftTargetCrossEntropy, soft_target_cross_entropy


def test_soft_target_loss_matches_torch_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=gen)
    labels = torch.randint(0, 10, (8,), generator=gen)
    soft = torch.softmax(torch.randn(8, 10, generator=gen), dim=1)
    torch.testing.assert_close(soft_target_cross_entropy(logits, labels), F.cross_entropy(logits, labels))
    torch.testing.assert_close(soft_target_cross_entropy(logits, one_hot(labels, 10)), F.cross_entropy(logits, labels))
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, soft), F.cross_entropy(logits, soft))
    with pytest.raises(ValueError, match=r"expected targets of shape \(8, 10\)"):
        soft_target_cross_entropy(logits, soft[:, :5])
    assert one_hot(torch.tensor([-1, 2]), 3).tolist() == [[0, 0, 0], [0, 0, 1]]

