"""The package's shape: layers import downwards only, no two modules share a name, and engines and
reports never recognise an algorithm by its class or a family by a kind."""

import ast
from pathlib import Path

import metakit

PACKAGE = Path(metakit.__file__).parent
BOTTOM = "metakit._l2l"  # learn2learn without its import banner: usable from every layer
LAYERS = {
    "metakit.experiments.util": {BOTTOM},
    "metakit.wrappers": {BOTTOM},
    "metakit.experiments.methods": {BOTTOM, "metakit.experiments.util", "metakit.wrappers"},
}
"""Each layer (a package) and what it may import besides itself; cli.py may import any."""
for upper, lower in (("tasks", "methods"), ("training", "tasks"), ("reports", "training")):
    below = LAYERS[f"metakit.experiments.{lower}"]
    LAYERS[f"metakit.experiments.{upper}"] = {f"metakit.experiments.{lower}", *below}
ALGORITHMS = {"MAML", "MAMLEnhanced", "MetaSGD", "ANIL", "Reptile", "Pretrain", "Finetune"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("metakit", *parts)).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


def imported(tree) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("metakit")}


def test_layers_import_downwards_only():
    for name, path, tree in modules():
        layer = next((layer for layer in LAYERS if name == layer or name.startswith(layer + ".")), None)
        if layer is None:
            continue
        allowed = (layer, *LAYERS[layer])
        upward = [m for m in imported(tree) if not any(m == a or m.startswith(a + ".") for a in allowed)]
        assert not upward, f"{path} imports {upward}"


def test_no_two_modules_share_a_basename():
    names = [path.name for _, path, _ in modules() if path.name != "__init__.py"]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_no_algorithm_class_or_family_kind_is_tested_outside_its_own_file():
    for name, path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                classes = node.args[1]
                listed = classes.elts if isinstance(classes, ast.Tuple) else [classes]
                tested = {getattr(c, "id", getattr(c, "attr", None)) for c in listed} & ALGORITHMS
                defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
                assert tested <= defined, f"{path}:{node.lineno} tests {tested}"
            if isinstance(node, ast.Attribute) and node.attr == "kind":
                assert "experiments.tasks" in name, f"{path}:{node.lineno} reads .kind"
