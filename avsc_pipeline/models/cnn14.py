"""PANNs' CNN14 (Kong et al., 2020) as an audio extractor, with its release's layer names.

:class:`Cnn14` holds exactly the layers of `Cnn14` in PANNs' `pytorch/models.py` under the
same names (`bn0`, `conv_block1..6.{conv1, conv2, bn1, bn2}`, `fc1`), so the published
`Cnn14_mAP=0.431.pth` loads as it is (:func:`load_cnn14_weights`). Two parts of that file are
left out by name: the torchlibrosa front end (`spectrogram_extractor.*`, `logmel_extractor.*`:
here the batch preparer computes the same log-mel on the device, and the file's filter bank is
checked against it) and the 527-class AudioSet head `fc_audioset.*` (as the Places365 loader
drops the 365-class head).

:class:`Cnn14Audio` runs the CNN14 on each audio channel of the front end's log-mel
`(B, C, 64, T)`; E_A is the mean of the channels' 2048-d `fc1` embeddings. An audio-only model
classifies E_A with its own linear scene head.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsc_pipeline.sections.features import PANNS_SAMPLE_RATE, panns_mel_filters
from .weights import load_weights_file, match_state_dict, normalize_keys

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: CNN14's input: 64 mel bands; five 2x2 average pools need at least 32 frames.
CNN14_MEL_BANDS = 64
CNN14_MIN_FRAMES = 32
#: The width of the `fc1` embedding, E_A.
CNN14_EMBED_DIM = 2048
#: Parts of PANNs' checkpoint that are not CNN14's backbone: the torchlibrosa front end and the
#: AudioSet head.
FRONT_END_PREFIXES: Tuple[str, ...] = ("spectrogram_extractor.", "logmel_extractor.")
HEAD_PREFIXES: Tuple[str, ...] = ("fc_audioset.",)
_MAX_LISTED = 20


class ConvBlock(nn.Module):
    """PANNs' `ConvBlock`: two bias-free 3x3 convs, each with BatchNorm and ReLU, then pooling.

    Args:
        in_channels: input channels.
        out_channels: output channels of both convs.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: Tensor, pool: int = 2) -> Tensor:
        """`(N, in, T, F)` -> `(N, out, T // pool, F // pool)`, average-pooled."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool) if pool > 1 else x


class Cnn14(nn.Module):
    """CNN14's backbone, PANNs' layer names, without its front end and AudioSet head.

    Input is PANNs' log-mel of one channel, `(N, 1, T, 64)` (time before mel bands, as PANNs
    lays it out); the output is the `fc1` embedding, `relu(fc1(max_t(x) + mean_t(x)))` over the
    frequency-averaged last block, `(N, 2048)`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(CNN14_MEL_BANDS)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, CNN14_EMBED_DIM, bias=True)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)

    def forward(self, x: Tensor) -> Tensor:
        """The `fc1` embedding (before PANNs' embedding dropout).

        Args:
            x: `(N, 1, T, 64)` float log-mel in dB, T >= 32.

        Returns:
            `(N, 2048)` float.
        """
        # bn0 normalizes each mel band: the bands become the channel axis for it.
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        blocks = [self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4, self.conv_block5]
        for block in blocks:
            x = F.dropout(block(x, pool=2), p=0.2, training=self.training)
        x = F.dropout(self.conv_block6(x, pool=1), p=0.2, training=self.training)
        x = x.mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu(self.fc1(x))


class Cnn14Audio(nn.Module):
    """E_A from PANNs' CNN14, run on each audio channel.

    Args:
        num_classes: width of the scene head of an audio-only model (:meth:`forward`).

    Attributes:
        backbone: the :class:`Cnn14`, whose state dict is the release's backbone.
        head: `Linear(2048, num_classes)`, the audio-only model's classifier (unused by E_A).
        embed_dim: 2048.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"expected num_classes to be a positive int, got {num_classes!r}")
        self.backbone = Cnn14()
        self.head = nn.Linear(CNN14_EMBED_DIM, num_classes)
        self.num_classes = num_classes
        self.embed_dim = CNN14_EMBED_DIM

    def embed(self, log_mel: Tensor) -> Tensor:
        """E_A: the mean over channels of each channel's `fc1` embedding.

        Args:
            log_mel: `(B, C, 64, T)` float, PANNs' log-mel of each of C audio channels (the
                batch preparer's front end; T >= 32).

        Returns:
            `(B, 2048)` float.
        """
        if not isinstance(log_mel, Tensor) or not log_mel.is_floating_point():
            raise TypeError(f"expected a floating point log-mel tensor, got {type(log_mel).__name__}")
        if log_mel.dim() != 4 or log_mel.shape[2] != CNN14_MEL_BANDS or log_mel.shape[3] < CNN14_MIN_FRAMES:
            raise ValueError(f"expected PANNs' log-mel of shape (B, C, {CNN14_MEL_BANDS}, T >= {CNN14_MIN_FRAMES}) "
                             f"(waveform shards through the on-device front end), got {tuple(log_mel.shape)}")
        batch, channels = log_mel.shape[:2]
        per_channel = log_mel.reshape(batch * channels, 1, CNN14_MEL_BANDS, -1).transpose(2, 3)
        embedding = F.dropout(self.backbone(per_channel.contiguous()), p=0.5, training=self.training)
        return embedding.reshape(batch, channels, CNN14_EMBED_DIM).mean(dim=1)

    def forward(self, log_mel: Tensor) -> Tensor:
        """Scene logits of an audio-only model: `(B, C, 64, T)` -> `(B, num_classes)`."""
        return self.head(self.embed(log_mel))

    def unused_in_embedding(self) -> List[nn.Module]:
        """The scene head, which E_A never runs: frozen in a joint model (DDP needs a gradient
        for every trainable parameter)."""
        return [self.head]


def load_cnn14_weights(backbone: Cnn14, path: PathLike, allow_unsafe: bool = False) -> int:
    """Load PANNs' checkpoint (or any file with its key names) into a :class:`Cnn14`, exactly.

    The file may be PANNs' release (`{"model": state_dict, ...}`), a dict with "state_dict", or a
    plain state dict; `module.` prefixes are stripped. The torchlibrosa front-end tensors and
    the AudioSet head are skipped by name, but a front end of another definition is refused:
    the file's `logmel_extractor.melW`, when present, must be the filter bank of PANNs' 32 kHz
    log-mel that the batch preparer computes (a CNN14 trained at 16 kHz has other filters and
    would see other features).

    Args:
        backbone: the module to fill.
        path: the weights file (`model.audio_weights`).
        allow_unsafe: allow the full unpickler for a trusted legacy pickle.

    Returns:
        The number of tensors loaded.

    Raises:
        ValueError: naming the file and every missing or shape-mismatched backbone tensor, or a
            front end that differs from the on-device one. Nothing is loaded then.
    """
    path = os.fspath(path)
    state = normalize_keys(load_weights_file(path, allow_unsafe, unsafe_field="model.audio_weights_unsafe"))
    _check_front_end(state, path)
    skipped = [k for k in state if k.startswith(FRONT_END_PREFIXES + HEAD_PREFIXES)]
    state = {k: v for k, v in state.items() if not k.startswith(FRONT_END_PREFIXES + HEAD_PREFIXES)}
    missing, unexpected, mismatched = match_state_dict(backbone, state)
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} CNN14 tensor(s) missing from the file: {_listed(missing)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s): {_listed(unexpected)}")
        raise ValueError(f"{path}: does not fit PANNs' CNN14; " + "; ".join(problems))
    if unexpected:
        logger.warning("%s: %d tensor(s) not in CNN14, ignored: %s", path, len(unexpected), _listed(unexpected))
    loadable = {k: v for k, v in state.items() if k not in unexpected}
    # strict=False only for num_batches_tracked buffers the file may lack (checked above).
    backbone.load_state_dict(loadable, strict=False)
    logger.info("loaded %d CNN14 tensors from %s (skipped by name: %d front-end and AudioSet-head tensors)",
                len(loadable), path, len(skipped))
    return len(loadable)


def _check_front_end(state: Dict[str, Tensor], path: str) -> None:
    """Refuse a file whose torchlibrosa filter bank (`melW`, `(513, 64)`) is not that of PANNs'
    32 kHz log-mel."""
    mel_w = state.get("logmel_extractor.melW")
    if mel_w is None:
        return
    expected = torch.as_tensor(panns_mel_filters(PANNS_SAMPLE_RATE), dtype=torch.float32).T
    if tuple(mel_w.shape) != tuple(expected.shape) or not torch.allclose(mel_w.float(), expected, atol=1e-6):
        raise ValueError(f"{path}: its front end (logmel_extractor.melW {tuple(mel_w.shape)}) is not PANNs' 32 kHz "
                         f"log-mel that the batch preparer computes ({tuple(expected.shape)}: 1024-point STFT, 64 "
                         "bands 50-14000 Hz); a CNN14 trained on another front end (e.g. Cnn14_16k) would see "
                         "other features")


def _listed(names: List[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown
