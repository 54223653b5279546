"""Stage two, evaluation and the GPU check import on a machine without librosa, soundfile and
PyAV (a bare GPU server has PyTorch, torchvision and h5py): each module is imported in a fresh
interpreter where importing those three raises ImportError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ("librosa", "soundfile", "av")
MODULES = (
    "avsc_pipeline.training.run",
    "avsc_pipeline.training.trainer",
    "avsc_pipeline.evaluation.evaluate",
    "avsc_pipeline.evaluation.scoring",
    "avsc_pipeline.evaluation.recordings",
    "avsc_pipeline_cli.train",
    "avsc_pipeline_cli.eval",
    "gpu_check",  # bench/gpu_check.py and, through it, bench/gpu_check_parts.py
)
# Imports every module in turn; for one that fails, prints which of the project's files on the
# way asked for the missing package (the import chain), one module per line.
SCRIPT = """
import importlib, sys, traceback
for name in {media!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
sys.path.insert(0, {bench!r})
failed = []
for module in {modules!r}:
    try:
        importlib.import_module(module)
    except ImportError as err:
        chain = [f"{{f.filename}}:{{f.lineno}}" for f in traceback.extract_tb(err.__traceback__)
                 if "/importlib/" not in f.filename and "<frozen" not in f.filename]
        failed.append(f"{{module}}: {{err}} (via {{' -> '.join(chain)}})")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def run_imports(modules, path: Path):
    script = SCRIPT.format(media=MEDIA, bench=str(path), modules=tuple(modules))
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_stage_two_evaluation_and_the_gpu_check_import_without_media_packages():
    result = run_imports(MODULES, ROOT / "bench")
    assert result.returncode == 0, ("modules that pull in librosa, soundfile or av:\n" + result.stdout
                                    + result.stderr[-2000:])


def test_a_module_that_pulls_one_in_is_named_with_its_import_chain(tmp_path):
    (tmp_path / "uses_soundfile.py").write_text("import soundfile\n")
    (tmp_path / "stage_two_like.py").write_text("import uses_soundfile\n")
    result = run_imports(["stage_two_like"], tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("stage_two_like: import of soundfile halted")
    assert "stage_two_like.py:1 -> " in result.stdout and "uses_soundfile.py:1" in result.stdout


def test_every_command_imports_without_torch():
    """`--help` stays fast: the command modules and the config sections they read import no torch
    (options list the library's own names, from numpy-only modules)."""
    script = ("import sys\n"
              "for m in ('eval', 'train', 'features', 'predict', 'calibrate', 'report', 'ablations'):\n"
              "    __import__('avsc_pipeline_cli.' + m)\n"
              "import avsc_pipeline.sections\n"
              "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
