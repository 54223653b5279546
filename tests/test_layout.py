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
    # The data sets sit on the bottom floor: what stage one reads, knowing nothing of stages.
    "corpus": ("avsc_pipeline.storage", "avsc_pipeline.features", "avsc_pipeline.dataio", "avsc_pipeline.models",
               "avsc_pipeline.training", "avsc_pipeline.evaluation"),
}


ALLOWED: dict = {}


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


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return name
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph():
    """`{module: {package modules it imports}}` over every module of the package, at any depth
    (imports inside functions count: a circle through a lazy import is still a circle)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, name, path.name == "__init__.py")
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_circle_inside_the_package():
    graph = import_graph()
    seen, on_path, circles = set(), [], []

    def visit(module):
        if module in on_path:
            circles.append(on_path[on_path.index(module):] + [module])
            return
        if module in seen:
            return
        seen.add(module)
        on_path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        on_path.pop()

    for module in sorted(graph):
        visit(module)
    assert not circles, "import circle(s): " + "; ".join(" -> ".join(c) for c in circles)


def test_the_atomic_write_imports_nothing_of_the_package():
    assert not import_graph()["avsc_pipeline.atomic"], "avsc_pipeline.atomic must stay on the bottom floor"


def test_training_never_imports_the_recipe():
    graph = import_graph()
    offending = sorted(m for m in graph if m.startswith("avsc_pipeline.training")
                       and "avsc_pipeline.recipe" in graph[m])
    assert not offending, f"{offending} import avsc_pipeline.recipe (above training)"


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_the_trainer_scores_without_ensembles_and_tta():
    """Validation scores through `evaluation.scoring`; the trainer never pulls in ensembles,
    test-time augmentation or checkpoint loading for scoring (any import depth)."""
    reached = _reachable(import_graph(), "avsc_pipeline.training.trainer")
    assert "avsc_pipeline.evaluation.scoring" in reached
    pulled = sorted(reached & {"avsc_pipeline.evaluation.ensemble", "avsc_pipeline.evaluation.tta",
                               "avsc_pipeline.evaluation.loading", "avsc_pipeline.evaluation.ensemble_weights"})
    assert not pulled, f"the trainer imports {pulled}"


def test_one_forward_path():
    """The trainer, the scorer and the embedding cache run their forwards through
    `avsc_pipeline.inference`; none calls autocast itself (the one place that does is inference)."""
    graph = import_graph()
    for module in ("avsc_pipeline.training.trainer", "avsc_pipeline.evaluation.scoring",
                   "avsc_pipeline.training.embedding_cache"):
        assert "avsc_pipeline.inference" in graph[module], module
    for path in (PACKAGE / "training" / "trainer.py", PACKAGE / "evaluation" / "scoring.py",
                 PACKAGE / "training" / "embedding_cache.py", PACKAGE / "evaluation" / "loading.py"):
        text = path.read_text()
        assert "autocast(" not in text and "memory_format=" not in text, path.name
