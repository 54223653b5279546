"""torch.compile that is practical: compiled regions, a compiler cache in the run folder, timed.

Compiling the whole joint model (DenseNet-161 and the FCNN in one graph) takes many minutes; the
regions of :func:`compile_regions` (the FCNN, and each dense block of a DenseNet, each layer of a
ResNet, else the whole backbone) compile separately and in place (`nn.Module.compile`), so the
glue between them stays eager and a DDP wrapper around the model is unchanged.

:class:`RunCompiler` keeps the compiler's caches in `RUN_DIR/compile-cache`: inductor's cache
folder (`TORCHINDUCTOR_CACHE_DIR`) and the portable artifacts of
`torch.compiler.save_cache_artifacts`, loaded again when the run resumes (or when another run
uses the folder), and logs how long the first, compiling, step took.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from avsc_pipeline.atomic import atomic_open

logger = logging.getLogger(__name__)

#: Where a run keeps its compiler caches.
CACHE_FOLDER = "compile-cache"
#: The portable cache artifacts in that folder.
ARTIFACTS_NAME = "artifacts.bin"


def video_regions(backbone: nn.Module) -> List[nn.Module]:
    """The regions a video backbone is compiled in: its DenseNet dense blocks, or its ResNet
    layers, else the backbone itself."""
    blocks = [m for m in backbone.modules() if type(m).__name__ == "_DenseBlock"]
    if blocks:
        return blocks
    layers = [getattr(backbone, f"layer{i}") for i in range(1, 5) if isinstance(getattr(backbone, f"layer{i}", None),
                                                                                nn.Module)]
    return layers or [backbone]


def model_regions(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """`(name, module)` of each region of a scene classifier: the FCNN (`audio`) and the video
    backbone's regions (`video.<name>`)."""
    regions: List[Tuple[str, nn.Module]] = []
    if getattr(model, "audio", None) is not None:
        regions.append(("audio", model.audio))
    video = getattr(model, "video", None)
    if video is not None:
        names = {id(m): n for n, m in video.backbone.named_modules()}
        regions += [(f"video.{names[id(m)] or 'backbone'}", m) for m in video_regions(video.backbone)]
    return regions


def compile_regions(model: nn.Module, mode: Optional[str] = None) -> List[str]:
    """Compile each region of `model` in place (nothing is compiled until its first call).

    Args:
        model: a :class:`~avsc_pipeline.models.classifier.SceneClassifier`.
        mode: torch.compile's mode (None: its default).

    Returns:
        The names of the compiled regions.
    """
    regions = model_regions(model)
    for _, module in regions:
        module.compile(mode=mode)
    return [name for name, _ in regions]


class RunCompiler:
    """A run's compilation: the compiler caches in `run_dir/compile-cache`, the compile time.

    Args:
        run_dir: the run folder (its cache folder is created on first save).
        scope: `regions` or `model` (`train.compile_scope`).
    """

    def __init__(self, run_dir: Path, scope: str) -> None:
        self.folder = Path(run_dir) / CACHE_FOLDER
        self.scope = scope
        self.done = False
        self.seconds: Optional[float] = None

    def prepare(self) -> bool:
        """Point inductor's cache at the run folder and load the saved artifacts, if any.

        Returns:
            Whether artifacts were loaded (a warm start, e.g. on `--resume`).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.folder / "inductor")
        artifacts = self.folder / ARTIFACTS_NAME
        if not artifacts.is_file():
            return False
        torch.compiler.load_cache_artifacts(artifacts.read_bytes())
        logger.info("compile: loaded the compiler cache %s", artifacts)
        return True

    def first_step(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run the first (compiling) step, log its time and save the compiler's artifacts."""
        started = time.perf_counter()
        out = step(*args)
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) and out[0].is_cuda:
            torch.cuda.synchronize(out[0].device)
        self.seconds = time.perf_counter() - started
        self.done = True
        logger.info("compile: the first step (compiling the %s) took %.1f s", self.scope, self.seconds)
        self.save()
        return out

    def eager(self) -> Any:
        """A context in which compiled code runs eagerly (`torch.compiler.set_stance`): validation
        scores as `avsc-eval` does, and no eval-mode variant is compiled."""
        return torch.compiler.set_stance("force_eager")

    def save(self) -> None:
        """Write the compiler's portable cache artifacts (atomically) into the cache folder."""
        saved = torch.compiler.save_cache_artifacts()
        if not saved:
            return
        data, _ = saved
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.folder / ARTIFACTS_NAME, "wb") as handle:
            handle.write(data)
