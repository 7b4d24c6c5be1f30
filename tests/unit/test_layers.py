"""The package map in README's "How it is built": no package imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import rescue

ROOT = Path(rescue.__file__).parent

# Lower numbers are lower layers; a package may import its own layer's values and
# anything below, never above. Packages of one layer do not import each other unless
# listed in ALSO.
LAYERS = {
    "errors": 0,
    "exitcodes": 0,
    "model": 1,
    "config": 1,
    "aio": 1,
    "tally": 1,
    "postfix": 2,
    "classify": 3,
    "smarthost": 3,
    "journal": 3,
    "srs": 3,
    "sources": 4,
    "diagnose": 4,
    "flush": 5,
    "route": 5,
    "service": 6,
    "cli": 7,
    "start": 8,
    "__main__": 9,
}
ALSO = {("diagnose", "classify"), ("sources", "journal")}


def imports_of(path: Path) -> set[str]:
    """The top-level rescue packages or modules a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "rescue" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_and_top_module_has_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()}
    tops = {t for t in tops if not t.startswith(("_", ".")) or t == "__main__"}
    tops -= {"py", "providers", "config.example"}  # data files
    assert tops - set(LAYERS) == set(), "give each new package a layer"


def test_no_package_imports_one_above_it() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        source = relative.parts[0].removesuffix(".py")
        for target in imports_of(path) - {source}:
            if (source, target) in ALSO:
                continue
            if LAYERS[target] >= LAYERS[source]:
                upward.append(f"{relative} imports rescue.{target}")
    assert upward == []
