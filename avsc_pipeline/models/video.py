"""Video backbones (a registry of names to specs) and the two-frame video extractor.

Every backbone maps `(N, 3, H, W)` normalized frames to a globally pooled `(N, D)` embedding.
torchvision and timm are imported inside the builders, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one video backbone and what it expects.

    Attributes:
        builder: `builder(pretrained)` returns an `nn.Module` mapping `(N, 3, H, W)` float
            normalized frames to `(N, embed_dim)`; `pretrained=True` asks the library for its
            named weights (downloads).
        embed_dim: D, the embedding width.
        mean: per-channel frame mean on the [0, 1] scale, RGB.
        std: per-channel frame std on the [0, 1] scale, RGB.
        head_prefixes: state-dict key prefixes of the classifier that weight files carry and
            the backbone drops (e.g. "classifier." for the 365-class Places365 head).
        library: "torchvision" or "timm" when named pretrained weights exist, else None.
        convert: `convert(state, backbone)` brings a weights file of another layout to the
            backbone's names (timm's own checkpoint filter: e.g. OpenAI's and OpenCLIP's
            `visual.*` CLIP files), applied when no key of the file is the backbone's; None: none.
    """

    builder: Callable[[bool], nn.Module]
    embed_dim: int
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    head_prefixes: Tuple[str, ...] = ()
    library: Optional[str] = None
    convert: Optional[Callable[[Dict[str, Tensor], nn.Module], Dict[str, Tensor]]] = None


class PooledFeatures(nn.Module):
    """`features` followed by global average pooling (VGG without its 4096-wide classifier).

    The attribute is called `features` so state-dict keys match torchvision's.
    """

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        """`(N, 3, H, W)` -> `(N, C)`, the channel means of the last feature map."""
        return self.features(x).mean(dim=(2, 3))


class SmallCNN(nn.Module):
    """A light CNN for the CPU demo, trained from scratch.

    Average-pools the input by `downsample` (224 -> 56), then stride-2 conv-BN-ReLU blocks and
    global average pooling. Enough to tell hue, orientation and spatial frequency of the demo's
    coloured gratings apart.

    Args:
        widths: output channels of the 3x3 stride-2 blocks; D = `widths[-1]`.
        downsample: average-pooling factor applied to the input first.
    """

    def __init__(self, widths: Tuple[int, ...] = (16, 32, 64), downsample: int = 4) -> None:
        super().__init__()
        layers: list = [nn.AvgPool2d(downsample)] if downsample > 1 else []
        in_ch = 3
        for width in widths:
            layers += [
                nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.embed_dim = in_ch
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """`(N, 3, H, W)` float frames -> `(N, widths[-1])`."""
        return self.features(x).mean(dim=(2, 3))


def _torchvision(arch: str, weights_enum: str, head: str, pretrained: bool) -> nn.Module:
    from torchvision import models

    weights = getattr(models, weights_enum).DEFAULT if pretrained else None
    model = getattr(models, arch)(weights=weights)
    # torchvision's forward pools (DenseNet: ReLU first) and flattens before this head.
    setattr(model, head, nn.Identity())
    return model


def _torchvision_vgg(arch: str, weights_enum: str, pretrained: bool) -> nn.Module:
    from torchvision import models

    weights = getattr(models, weights_enum).DEFAULT if pretrained else None
    return PooledFeatures(getattr(models, arch)(weights=weights).features)


def _small_cnn(pretrained: bool) -> nn.Module:
    if pretrained:
        raise ValueError(
            "expected no named weights for small_cnn (trained from scratch), got pretrained=True"
        )
    return SmallCNN()


def _tv_spec(arch: str, weights_enum: str, head: str, dim: int) -> BackboneSpec:
    return BackboneSpec(
        builder=functools.partial(_torchvision, arch, weights_enum, head),
        embed_dim=dim,
        head_prefixes=(head + ".",),
        library="torchvision",
    )


VIDEO_BACKBONES: Dict[str, BackboneSpec] = {
    "densenet161": _tv_spec("densenet161", "DenseNet161_Weights", "classifier", 2208),
    "vgg19": BackboneSpec(
        builder=functools.partial(_torchvision_vgg, "vgg19", "VGG19_Weights"),
        embed_dim=512,
        head_prefixes=("classifier.",),
        library="torchvision",
    ),
    "resnet50": _tv_spec("resnet50", "ResNet50_Weights", "fc", 2048),
    "resnet18": _tv_spec("resnet18", "ResNet18_Weights", "fc", 512),
    "mobilenet_v3_small": _tv_spec(
        "mobilenet_v3_small", "MobileNet_V3_Small_Weights", "classifier", 576
    ),
    "small_cnn": BackboneSpec(builder=_small_cnn, embed_dim=64),
}


def check_backbone_name(name: str) -> None:
    """Raise ValueError unless `name` is a registry name or "timm:<model_name>"."""
    if not isinstance(name, str):
        raise ValueError(f"expected a video backbone name (str), got {name!r}")
    if name.startswith(TIMM_PREFIX):
        if not name[len(TIMM_PREFIX):]:
            raise ValueError(f"expected 'timm:<model_name>', got {name!r}")
        return
    if name not in VIDEO_BACKBONES:
        raise ValueError(
            f"expected a video backbone in {sorted(VIDEO_BACKBONES)} or 'timm:<model_name>', "
            f"got {name!r}"
        )


def named_weights_library(name: str) -> Optional[str]:
    """The library ("torchvision"/"timm") whose named weights backbone `name` can use, or None."""
    check_backbone_name(name)
    if name.startswith(TIMM_PREFIX):
        return "timm"
    return VIDEO_BACKBONES[name].library


def build_backbone(name: str, pretrained: bool = False) -> Tuple[nn.Module, BackboneSpec]:
    """Build a backbone by name.

    Args:
        name: a key of `VIDEO_BACKBONES` or "timm:<model_name>" (needs the `timm` extra).
        pretrained: load the library's named pretrained weights (downloads; never in tests).

    Returns:
        The module, mapping `(N, 3, H, W)` -> `(N, D)`, and its spec.
    """
    check_backbone_name(name)
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], pretrained)
    spec = VIDEO_BACKBONES[name]
    return spec.builder(pretrained), spec


def _build_timm(model_name: str, pretrained: bool) -> Tuple[nn.Module, BackboneSpec]:
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"video backbone 'timm:{model_name}' needs timm: pip install avsc-pipeline[timm]"
        ) from None
    clip = is_clip_tower(model_name)
    # A CLIP tower keeps its head, the image-text projection: E_V is CLIP's image embedding.
    head = {} if clip else {"num_classes": 0}
    model = timm.create_model(model_name, pretrained=pretrained, **head)
    cfg = dict(getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}))
    classifier = cfg.get("classifier") or ()
    prefixes = () if clip else ((classifier,) if isinstance(classifier, str) else tuple(classifier))
    spec = BackboneSpec(
        builder=lambda pre: timm.create_model(model_name, pretrained=pre, **head),
        embed_dim=int(model.num_classes) if clip else int(getattr(model, "head_hidden_size", None) or model.num_features),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        head_prefixes=tuple(p + "." for p in prefixes),
        library="timm",
        convert=_timm_converter(model),
    )
    return model, spec


def _timm_converter(model: nn.Module) -> Optional[Callable[[Dict[str, Tensor], nn.Module], Dict[str, Tensor]]]:
    """timm's checkpoint filter of the model's family (`checkpoint_filter_fn` of its module), which
    converts the original releases' layouts, for files that hold none of the model's own names."""
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return None

    def convert(state: Dict[str, Tensor], backbone: nn.Module) -> Dict[str, Tensor]:
        own = backbone.state_dict()
        if any(key in own for key in state):
            return state  # the model's own names: loaded as they are, checked as they are
        return dict(filter_fn(state, backbone))

    return convert


#: Pretrained tags of classifiers fine-tuned from CLIP (their head is ImageNet's classes).
_CLASSIFIER_TAGS = re.compile(r"in1k|in12k|in21k|in22k")


def is_clip_tower(model_name: str) -> bool:
    """Whether timm's `model_name` is a CLIP image tower whose head is the image-text projection
    (e.g. `vit_base_patch16_clip_224.openai`, 512-d; `convnext_base.clip_laion2b`), read from
    timm's pretrained config: "clip" in its architecture or tag, and a tag that is not a
    classifier fine-tuned on ImageNet (`..._ft_in1k`: 1000 classes)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
    except RuntimeError:  # no pretrained config: not a CLIP release (timm refuses unknown names itself)
        return False
    if cfg is None:
        return False
    tag = cfg.tag or ""
    return "clip" in f"{cfg.architecture}.{tag}" and not _CLASSIFIER_TAGS.search(tag)


def is_channels_last(module: nn.Module) -> bool:
    """True when any 4-D parameter of `module` is stored channels-last (and not plain NCHW)."""
    return any(
        p.dim() == 4
        and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in module.parameters()
    )


class VideoExtractor(nn.Module):
    """E_V: one backbone run on every frame of a segment, embeddings summed over frames.

    Args:
        backbone: maps `(N, 3, H, W)` -> `(N, embed_dim)`.
        spec: the backbone's spec (embed_dim, frame mean and std).
        name: the backbone's name, for messages.

    Attributes:
        channels_last: whether the backbone's weights are channels-last, so the frames are made
            so too; set at construction and after every `.to()` (not checked per forward).
    """

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, name: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.name = name
        self.embed_dim = spec.embed_dim
        self.frame_mean: Tuple[float, float, float] = tuple(spec.mean)
        self.frame_std: Tuple[float, float, float] = tuple(spec.std)
        self.channels_last = is_channels_last(backbone)

    def _apply(self, fn, recurse: bool = True):
        # `.to(memory_format=...)`, `.cuda()`, `.half()` all come here: the frames' layout is
        # decided once per conversion, not by a loop over the backbone's parameters per forward.
        out = super()._apply(fn, recurse)
        self.channels_last = is_channels_last(self.backbone)
        return out

    def forward(self, video: Tensor) -> Tensor:
        """Embed a batch of segments.

        Args:
            video: `(B, K, 3, H, W)` float32 frames, already normalized with `frame_mean` and
                `frame_std` (K = 2 frames per segment in the recipe).

        Returns:
            `(B, embed_dim)`, the sum over the K frame embeddings.
        """
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"expected video of shape (B, K, 3, H, W), got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise TypeError(f"expected normalized floating-point frames, got {video.dtype}")
        batch, frames = video.shape[:2]
        flat = video.flatten(0, 1)
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        embeddings = self.backbone(flat)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"expected backbone {self.name!r} to return (N, {self.embed_dim}), "
                f"got {tuple(embeddings.shape)}"
            )
        return embeddings.reshape(batch, frames, self.embed_dim).sum(dim=1)
