"""Name -> implementation registries for the `model:` section (no `eval`, no string imports)."""

from __future__ import annotations

from typing import Dict, Type

from torch import nn

from .fcnn import FCNN
from .video import VIDEO_BACKBONES

#: Audio extractors by name; each class has `from_config(config, in_channels, num_classes)`,
#: `embed(x)` and `embed_dim`.
AUDIO_EXTRACTORS: Dict[str, Type[nn.Module]] = {"fcnn": FCNN}

__all__ = ["AUDIO_EXTRACTORS", "VIDEO_BACKBONES"]
