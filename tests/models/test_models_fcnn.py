"""FCNN audio extractor: shapes, parameter count, initialization, BN settings, attention."""

import math

import pytest
import torch
from torch import nn

from avsc_pipeline.models.fcnn import FCNN, ChannelAttention, ConvBNReLU

SMALL = (8, 16, 32)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("widths", [(144, 288, 576), SMALL])
def test_shapes_and_embeddings(widths):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 128, 39)
    att = FCNN(6, 10, widths).eval()
    assert att.block3_map(x).shape == (2, widths[2], 8, 2)
    assert att(x).shape == (2, 10)
    assert att.features(x).shape == (2, widths[2])
    assert att.embed_dim == 10 and torch.equal(att.embed(x), att(x))
    blk = FCNN(6, 10, widths, embedding="block3").eval()
    assert blk.embed_dim == widths[2] and blk.embed(x).shape == (2, widths[2])


def test_parameter_count_matches_the_layer_definitions():
    c, k, (w1, w2, w3) = 6, 10, (144, 288, 576)
    convs = [(c, w1, 5), (w1, w1, 3), (w1, w2, 3), (w2, w2, 3),
             (w2, w3, 3), (w3, w3, 3), (w3, w3, 3), (w3, w3, 3), (w3, k, 1)]
    conv_weights = sum(i * o * s * s for i, o, s in convs)  # bias-free
    bn_affine = 2 * (c + w1 + w1 + w2 + w2 + 4 * w3)  # the two head BNs have no parameters
    attention = (k * (k // 2) + k // 2) + ((k // 2) * k + k)  # shared MLP with biases
    model = FCNN(c, k)
    assert sum(p.numel() for p in model.parameters()) == conv_weights + bn_affine + attention
    assert conv_weights + bn_affine + attention == 11_791_135
    assert len(_convs(model)) == 9
    assert all(m.bias is None for m in _convs(model))


def test_layer_layout_bn_settings_and_dropout_positions():
    model = FCNN(6, 10, SMALL, dropout=0.3, bn_eps=1e-3, bn_momentum=0.01)
    first = model.block1[0][0]
    assert (first.kernel_size, first.stride, first.padding) == ((5, 5), (2, 2), (2, 2))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 8 + 2
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    assert [bn.affine for bn in (model.head_bn1, model.head_bn2)] == [False, False]
    layout = [type(m).__name__ for m in model.block3]
    assert layout == ["ConvBNReLU", "Dropout"] * 3 + ["ConvBNReLU", "MaxPool2d"]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(d.p == 0.3 for d in dropouts)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and not any(p.ceil_mode for p in pools)
    assert all(isinstance(b[-1], nn.ReLU) for b in model.modules() if isinstance(b, ConvBNReLU))


def test_bn_momentum_is_torch_convention():
    model = FCNN(6, 10, SMALL).train()
    x = torch.randn(4, 6, 128, 39) * 3 + 1
    model(x)
    expected = 0.01 * x.mean(dim=(0, 2, 3))  # Keras momentum 0.99 keeps 99% of the old value
    torch.testing.assert_close(model.input_bn.running_mean, expected)


def test_he_normal_init():
    torch.manual_seed(0)
    model = FCNN(6, 10)
    for conv in _convs(model)[1:8]:  # large enough for a tight estimate
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05)
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2.0 / fan_in)


def test_channel_attention_matches_a_manual_computation():
    torch.manual_seed(1)
    att = ChannelAttention(10, ratio=2)
    w1, b1 = att.mlp[0].weight, att.mlp[0].bias
    w2, b2 = att.mlp[2].weight, att.mlp[2].bias
    assert w1.shape == (5, 10) and w2.shape == (10, 5)
    with torch.no_grad():
        b1.normal_()
        b2.normal_()
    x = torch.randn(3, 10, 8, 2)
    expected = torch.empty_like(x)
    for i in range(3):
        avg = x[i].reshape(10, -1).mean(dim=1)
        peak = x[i].reshape(10, -1).max(dim=1).values
        mlp = [w2 @ torch.clamp(w1 @ d + b1, min=0) + b2 for d in (avg, peak)]
        weight = 1.0 / (1.0 + torch.exp(-(mlp[0] + mlp[1])))
        expected[i] = x[i] * weight[:, None, None]
    torch.testing.assert_close(att(x), expected)


def test_wrong_input_is_refused():
    model = FCNN(6, 10, SMALL)
    with pytest.raises(ValueError, match=r"expected audio of shape \(B, 6, F, T\), got \(2, 4, 128, 39\)"):
        model(torch.randn(2, 4, 128, 39))
    with pytest.raises(ValueError, match="embedding"):
        FCNN(6, 10, SMALL, embedding="pooled")
