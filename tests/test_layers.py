"""The package's layers, as its folders show them: a module imports only from its own layer or lower ones.

core/ (pool, uids, cache, files, errors) < select/ (masks, uid sets) < scores/ < engines/ < the pipeline
(config, pipeline, provenance, recipes) < commands/ and apps/. Imports inside functions count too;
imports only for type checking do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "datacomp_plugins"
LAYERS = {
    "core": 0, "errors": 0, "runtime": 0, "__init__": 0, "__version__": 0,
    "select": 1,
    "scores": 2,
    "engines": 3,
    "config": 4, "pipeline": 4, "provenance": 4, "recipes": 4, "filtering": 4, "flags": 4, "datacomp_api": 4, "runs": 4,
    "commands": 5, "apps": 5, "cli": 5, "__main__": 5,
}


def layer(module: str) -> int:
    """The layer of ``datacomp_plugins.x.y`` (by its first component)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    assert head in LAYERS, f"{module}: no layer assigned (add it to LAYERS)"
    return LAYERS[head]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("datacomp_plugins"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "datacomp_plugins" \
                else [node.module]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("datacomp_plugins")]
    return found


def test_no_module_imports_an_upper_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "datacomp_plugins." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = layer(module)
        for line, name in imports(path):
            if layer(name) > own:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_lower_layers_stay_small():
    """No module below the applications over ~350 lines: a module that grows past it is doing two jobs."""
    lower = [p for p in PACKAGE.rglob("*.py") if layer("datacomp_plugins." + ".".join(
        p.relative_to(PACKAGE).with_suffix("").parts)) < LAYERS["commands"]]
    long = {str(p.relative_to(PACKAGE)): n for p in lower if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long
