"""Test that every import in src/velvet follows the layer table of docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "velvet"


def layer_table() -> dict[str, set[str]]:
    """The ```layers block of docs/architecture.md: package -> the packages it may import."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("```layers\n", 1)[1].split("```", 1)[0]
    return {line.split()[0]: set(line.split()[1:]) for line in block.splitlines() if line.strip()}


def layer_of(path: Path) -> str:
    """The top-level package (or module) of src/velvet a file belongs to."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0].removesuffix(".py")


def imported_layers(path: Path) -> set[str]:
    """The velvet layers a file imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("velvet.")}
    return found


def test_every_layer_of_the_package_is_in_the_table() -> None:
    """Test that the table names every package of src/velvet (a new one must be placed)."""
    layers = {layer_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert layers <= set(layer_table()), f"not in docs/architecture.md: {sorted(layers - set(layer_table()))}"


def test_imports_point_down_the_layers() -> None:
    """Test that no file imports a layer its own layer may not import."""
    table = layer_table()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        if layer == "__init__":
            continue
        for target in imported_layers(path) - {layer} - table[layer]:
            wrong.append(f"{path.relative_to(REPO)} imports velvet.{target}")
    assert not wrong, "\n".join(wrong)
