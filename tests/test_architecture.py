"""The README's architecture diagram holds: no module imports one above it."""

import ast
from pathlib import Path

import pixeldiffusion

PACKAGE = Path(pixeldiffusion.__file__).parent
# the README's diagram, top to bottom; a module may import those on its own level or below
LEVELS = [
    {"cli", "__main__"},
    {"training", "evaluation", "serve", "tensorboard"},
    {"pipeline", "visualize"},
    {"config", "recipes", "interop"},
    {
        "models",
        "schedule",
        "objectives",
        "sampling",
        "distillation",
        "data",
        "checkpoint",
        "process",
        "runtime",
        "seeding",
        "errors",
    },
]


def level(module: str) -> int:
    top = module.split(".")[0]
    found = [i for i, names in enumerate(LEVELS) if top in names]
    assert found, f"{module} is not in the diagram: add it to LEVELS and to the README's Architecture section"
    return found[0]


def imports(path: Path) -> set[str]:
    """pixeldiffusion modules a file imports, at run time (not those under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    hinted = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and getattr(branch.test, "id", "") == "TYPE_CHECKING"
        for node in ast.walk(branch)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in hinted:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pixeldiffusion."):
            found.add(node.module.removeprefix("pixeldiffusion."))
        elif isinstance(node, ast.ImportFrom) and node.module == "pixeldiffusion":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("pixeldiffusion.") for a in node.names if a.name.startswith("pixeldiffusion.")
            )
    return found


def test_no_module_imports_one_above_it():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if name == "__init__":  # the package root re-exports the public API
            continue
        for imported in imports(path):
            if level(imported) < level(name):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_training_does_not_import_evaluation():
    for path in (PACKAGE / "training").glob("*.py"):
        assert not any(m.startswith("evaluation") for m in imports(path)), path
