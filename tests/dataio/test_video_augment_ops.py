"""torchvision's whole RandAugment space in VideoRandAugment: every operation against torchvision,
each operation alone at p=0.5 (the Table 2 ablations), and the configs that select them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from avsc_pipeline.config import dump_yaml
from avsc_pipeline.sections.loading import RANDAUGMENT_OPS, VIDEO_OPS, BatchAugmentConfig
from avsc_pipeline.dataio.video_augment import OP_SPACE, VideoRandAugment, magnitude_of
from avsc_pipeline.sections import load_recipe, load_section

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HEIGHT, WIDTH = 36, 44  # not square, so a translation along the wrong axis shows
NEAREST = v2.InterpolationMode.NEAREST

# What torchvision's RandAugment calls for each operation with the signed magnitude `m`
# (`_AutoAugmentBase._apply_image_or_video_transform`, default interpolation and fill).
REFERENCE = {
    "Identity": lambda x, m: x,
    "ShearX": lambda x, m: TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, interpolation=NEAREST, fill=None,
                                     shear=[math.degrees(math.atan(m)), 0.0], center=[0, 0]),
    "ShearY": lambda x, m: TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, interpolation=NEAREST, fill=None,
                                     shear=[0.0, math.degrees(math.atan(m))], center=[0, 0]),
    "TranslateX": lambda x, m: TF.affine(x, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0],
                                         interpolation=NEAREST, fill=None),
    "TranslateY": lambda x, m: TF.affine(x, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0],
                                         interpolation=NEAREST, fill=None),
    "Rotate": lambda x, m: TF.rotate(x, angle=m, interpolation=NEAREST, fill=None),
    "Brightness": lambda x, m: TF.adjust_brightness(x, brightness_factor=1.0 + m),
    "Color": lambda x, m: TF.adjust_saturation(x, saturation_factor=1.0 + m),
    "Contrast": lambda x, m: TF.adjust_contrast(x, contrast_factor=1.0 + m),
    "Sharpness": lambda x, m: TF.adjust_sharpness(x, sharpness_factor=1.0 + m),
    "Posterize": lambda x, m: TF.posterize(x, bits=int(m)),
    "Solarize": lambda x, m: TF.solarize(x, threshold=255 * m),
    "AutoContrast": lambda x, m: TF.autocontrast(x),
    "Equalize": lambda x, m: TF.equalize(x),
}
ALONE = [op for op in RANDAUGMENT_OPS if op != "Identity"]
# torchvision's RandAugment: all but the paper's Invert and Cutout (tested on their own below).
TORCHVISION_OPS = tuple(op for op in RANDAUGMENT_OPS if op not in ("Invert", "Cutout"))


def torchvision_magnitude(op: str, magnitude: int, num_bins: int, height: int, width: int) -> float:
    """The unsigned magnitude as `v2.RandAugment.forward` computes it."""
    scale, _ = v2.RandAugment._AUGMENTATION_SPACE[op]
    values = scale(num_bins, height, width)
    return 0.0 if values is None else float(values[magnitude])


def images(n: int, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=gen)


def test_op_space_is_torchvision_randaugment():
    assert tuple(OP_SPACE) == RANDAUGMENT_OPS
    assert TORCHVISION_OPS == tuple(v2.RandAugment._AUGMENTATION_SPACE)
    for op in TORCHVISION_OPS:
        assert OP_SPACE[op][1] == v2.RandAugment._AUGMENTATION_SPACE[op][1], op
        for num_bins, magnitude in ((31, 0), (31, 14), (31, 30), (11, 7)):
            for height, width in ((HEIGHT, WIDTH), (224, 224)):
                expected = torchvision_magnitude(op, magnitude, num_bins, height, width)
                assert magnitude_of(op, magnitude, num_bins, (height, width)) == expected, (op, magnitude)
    assert magnitude_of("Posterize", 14, 31) == 6.0 and magnitude_of("Solarize", 30, 31) == 0.0
    with pytest.raises(ValueError, match=r"expected the image size \(height, width\) for TranslateY"):
        magnitude_of("TranslateY", 14, 31)
    with pytest.raises(ValueError, match="expected the image size"):
        VideoRandAugment(ops=("Identity", "TranslateX"), seed=0).draw(4, torch.device("cpu"))


@pytest.mark.parametrize("kernels", ["batched", "per_image"])
@pytest.mark.parametrize("magnitude", [14, 30])
@pytest.mark.parametrize("op", TORCHVISION_OPS)
def test_each_drawn_op_equals_torchvision(op, magnitude, kernels):
    module = VideoRandAugment(ops=(op,), num_ops=1, magnitude=magnitude, kernels=kernels, seed=7)
    x = images(16, seed=magnitude)
    op_ids, drawn = module.draw(16, torch.device("cpu"), (HEIGHT, WIDTH))
    expected_magnitude = torchvision_magnitude(op, magnitude, 31, HEIGHT, WIDTH)
    if v2.RandAugment._AUGMENTATION_SPACE[op][1]:
        assert set(drawn.flatten().tolist()) == {-expected_magnitude, expected_magnitude}
    else:
        assert (drawn == expected_magnitude).all()
    out = module.apply(x, op_ids, drawn)
    augment = v2.RandAugment()
    for i in range(16):
        m = float(drawn[i, 0])
        expected = REFERENCE[op](x[i], m)
        assert torch.equal(expected, augment._apply_image_or_video_transform(
            x[i], op, m, interpolation=augment.interpolation, fill=augment._fill))
        assert torch.equal(out[i], expected), f"{op} image {i}, magnitude {m}"


@pytest.mark.parametrize("kernels", ["batched", "per_image"])
def test_every_op_in_sequence_equals_torchvision(kernels):
    module = VideoRandAugment(ops=TORCHVISION_OPS, num_ops=3, kernels=kernels, seed=11)
    video = images(64, seed=3).view(32, 2, 3, HEIGHT, WIDTH)
    out = module(video).view(64, 3, HEIGHT, WIDTH)
    op_ids, drawn = VideoRandAugment(ops=TORCHVISION_OPS, num_ops=3, seed=11).draw(
        64, torch.device("cpu"), (HEIGHT, WIDTH))
    assert len(set(op_ids.flatten().tolist())) == len(TORCHVISION_OPS)
    for i, image in enumerate(video.view(64, 3, HEIGHT, WIDTH)):
        for code, m in zip(op_ids[i].tolist(), drawn[i].tolist()):
            image = REFERENCE[TORCHVISION_OPS[code]](image, m)
        assert torch.equal(out[i], image), f"image {i}"


@pytest.mark.parametrize("op", ALONE)
def test_each_ablation_applies_its_op_alone_to_about_half_the_frames(op):
    from avsc_pipeline.ablations import load_tables, row_recipe

    row = next(r for r in load_tables()[2] if r.name == op.lower())
    augment = row_recipe(row, Path("runs/audio-plain/best.pt")).batch_augment
    assert (augment.video_ops, augment.video_num_ops, augment.video_magnitude) == (("Identity", op), 1, 14)
    module = VideoRandAugment(augment.video_ops, augment.video_num_ops, augment.video_magnitude,
                              augment.video_magnitude_bins, augment.video_kernels, seed=5)
    # grey levels 30..219 so that AutoContrast and Equalize change every frame they touch
    video = images(256, seed=9, low=30, high=220).view(128, 2, 3, HEIGHT, WIDTH)
    changed = (module(video) != video).flatten(2).any(dim=2).flatten()
    op_ids, _ = VideoRandAugment(augment.video_ops, 1, 14, seed=5).draw(256, torch.device("cpu"), (HEIGHT, WIDTH))
    assert torch.equal(changed, op_ids[:, 0] == 1)  # X changes every frame it is drawn for
    assert abs(float(changed.double().mean()) - 0.5) < 0.09


def test_config_accepts_every_randaugment_op_and_refuses_unknown_ones(tmp_path):
    assert BatchAugmentConfig().video_ops == VIDEO_OPS == ("Identity", "Sharpness", "Contrast")
    assert BatchAugmentConfig(video_ops=RANDAUGMENT_OPS).video_ops == RANDAUGMENT_OPS
    augment = BatchAugmentConfig(video_ops=("Identity", "TranslateY"), video_num_ops=1)
    dump_yaml({"batch_augment": augment}, tmp_path / "c.yaml")
    assert load_section(tmp_path / "c.yaml", "batch_augment", BatchAugmentConfig) == augment
    for unknown in ("Mirror", "rotate", "Blur"):
        with pytest.raises(ValueError, match=rf"expected video_ops within .* got \['Identity', '{unknown}'\]"):
            BatchAugmentConfig(video_ops=("Identity", unknown))
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        VideoRandAugment(ops=("Identity", "Mirror"))


def test_invert_and_cutout_of_the_randaugment_paper():
    from avsc_pipeline.dataio.video_augment import VideoRandAugment, cutout_batch, magnitude_of

    images = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    # Cutout at M = 14 of 31 bins: a half-side of 14/30 of 40 px on a 224 px image.
    assert magnitude_of("Cutout", 14, 31, (224, 224)) == pytest.approx(40.0 * 14 / 30)
    out = cutout_batch(images, torch.full((4,), 10.0), torch.full((4, 2), 0.5))
    square = torch.zeros(224, 224, dtype=torch.bool)
    square[102:122, 102:122] = True
    assert (out[:, :, square] == 128).all() and torch.equal(out[:, :, ~square], images[:, :, ~square])
    corner = cutout_batch(images, torch.full((4,), 10.0), torch.zeros(4, 2))  # clipped at the border
    assert (corner[:, :, :10, :10] == 128).all() and torch.equal(corner[:, :, 10:], images[:, :, 10:])
    for kernels in ("batched", "per_image"):
        module = VideoRandAugment(ops=("Invert",), num_ops=1, kernels=kernels, seed=0).train()
        assert torch.equal(module(images), 255 - images)
        cut = VideoRandAugment(ops=("Cutout",), num_ops=1, kernels=kernels, seed=0).train()(images)
        grey = (cut == 128).all(dim=1) & (images != 128).any(dim=1)
        assert 0 < int(grey.sum()) <= 4 * (2 * 18) ** 2
    batched = VideoRandAugment(ops=("Cutout", "Identity"), num_ops=2, kernels="batched", seed=5).train()(images)
    per_image = VideoRandAugment(ops=("Cutout", "Identity"), num_ops=2, kernels="per_image", seed=5).train()(images)
    assert torch.equal(batched, per_image)
