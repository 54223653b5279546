"""The import direction of STYLE.md: models know tensors, not shards; scoring needs no trainer."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "avsc_pipeline"
FORBIDDEN = {
    "models": ("avsc_pipeline.dataio", "avsc_pipeline.storage", "avsc_pipeline.training", "avsc_pipeline.evaluation",
               "avsc_pipeline.features"),
    "evaluation": ("avsc_pipeline.training",),
    "dataio": ("avsc_pipeline.models", "avsc_pipeline.training", "avsc_pipeline.evaluation"),
    "storage": ("avsc_pipeline.features", "avsc_pipeline.dataio", "avsc_pipeline.models", "avsc_pipeline.training"),
}


# The shard schema is written in terms of the `features:` section, a leaf module with no imports
# of its own besides the shared validators: storage may read it, and nothing else of stage one.
ALLOWED = {"storage": ("avsc_pipeline.features.config",)}


def imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    offending = [f"{path.name}: {name}" for path in sorted((PACKAGE / package).glob("*.py"))
                 for name in imported_modules(path)
                 if name.startswith(FORBIDDEN[package]) and name not in ALLOWED.get(package, ())]
    assert not offending, f"avsc_pipeline.{package} imports {offending}"
