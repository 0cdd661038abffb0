"""Imports point down only: every module of intermod belongs to one layer and imports only from its own
layer or the layers below it (docs/architecture.md says what each layer is for).

The layers, lowest first:

1. core: measures, transforms and file conventions that know nothing of networks, datasets or runs;
2. networks: the network and what is needed to apply and record it (whole-volume inference, the
   checkpoint's metadata);
3. data: the on-disk layouts (dataset and source), the phantom and its synthesis, the training
   pipeline, the importers of public datasets;
4. evaluation: a run's metrics.json, Table 1, figures;
5. baselines: the classical (ANTs) registrations;
6. applications: training (the LightningModule), registering new images, making paired data;
7. runner: one run of the protocol, wiring all of the above together from a config;
8. cli: the console scripts.

Every import counts: at the top of a module, inside a function (lazy), under ``TYPE_CHECKING``, and a
module named in a string (``importlib.import_module``, ``python -m``). Modules are parsed with ``ast``,
never imported.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "intermod"

# Lowest first. A prefix covers a package and everything in it; "intermod" alone is the package's __init__.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("intermod", "intermod.io", "intermod.wandb_mode", "intermod.runs", "intermod.spatial",
              "intermod.spatial_numpy", "intermod.losses", "intermod.metrics", "intermod.geometry",
              "intermod.preprocessing", "intermod.schedules")),
    ("networks", ("intermod.networks", "intermod.inference", "intermod.refinement", "intermod.checkpoint")),
    ("data", ("intermod.data", "intermod.importers")),
    ("evaluation", ("intermod.evaluation",)),
    ("baselines", ("intermod.baselines",)),
    ("applications", ("intermod.module", "intermod.registration", "intermod.pairing")),
    ("runner", ("intermod.runner",)),
    ("cli", ("intermod.cli",)),
)
MODULE_NAME = re.compile(r"intermod(\.\w+)+")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int | None:
    """The index in LAYERS of the longest prefix covering ``name``; None where no layer does."""
    best, length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            covers = name == prefix or (prefix != "intermod" and name.startswith(prefix + "."))
            if covers and len(prefix) > length:
                best, length = index, len(prefix)
    return best


def resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of a dotted ``name`` that is a module of the package (``a.b.Class`` -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(name: str, source: str, modules: set[str], is_package: bool = False) -> set[tuple[str, int]]:
    """(imported module of the package, line) for every import in ``source``, the module ``name``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            # ``from a import b`` imports the module a.b where there is one, else a name of a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            targets = [node.value]  # a module named in a string
        else:
            continue
        for target in targets:
            module = resolve(target, modules)
            if module is not None and module != name:
                found.add((module, node.lineno))
    return found


def all_imports() -> dict[str, set[tuple[str, int]]]:
    modules = package_modules()
    return {name: imports_of(name, path.read_text(encoding="utf-8"), set(modules), path.name == "__init__.py")
            for name, path in modules.items()}


def test_every_module_has_a_layer():
    unplaced = [name for name in package_modules() if layer_of(name) is None]
    assert not unplaced, f"add these modules to a layer of LAYERS (and to docs/architecture.md): {unplaced}"


def test_imports_point_down_only():
    upward = []
    for name, imported in all_imports().items():
        for target, line in sorted(imported):
            if None not in (layer_of(name), layer_of(target)) and layer_of(target) > layer_of(name):
                upward.append(f"{name}:{line} ({LAYERS[layer_of(name)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that point up:\n  " + "\n  ".join(upward)


def test_the_scan_sees_top_level_lazy_and_named_imports():
    imports = {name: {target for target, _ in found} for name, found in all_imports().items()}
    assert "intermod.data.layout" in imports["intermod.runner"]  # at the top
    assert "intermod.data.synthesis" in imports["intermod.runner"]  # inside ensure_dataset
    assert "intermod.importers.goldatlas" in imports["intermod.importers"]  # by name, for importlib
    assert "intermod.networks.unet" in imports["intermod.registration.model"]


@pytest.mark.parametrize("source, expected", [
    ("import intermod.runner", {"intermod.runner"}),
    ("def f():\n    from intermod.cli import train", {"intermod.cli.train"}),
    ("from intermod.cli import CONF_DIR", {"intermod.cli"}),
    ("from ..cli import train", {"intermod.cli.train"}),
    ("from . import layout", {"intermod.data.layout"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from intermod.runner import run", {"intermod.runner"}),
    ("MODULE = 'intermod.evaluation.table'", {"intermod.evaluation.table"}),
    ("'''Docs naming intermod.cli in passing.'''\nimport numpy", set()),
])
def test_the_scan_resolves_each_kind_of_import(source, expected):
    modules = set(package_modules())
    assert {target for target, _ in imports_of("intermod.data.phantom", source, modules)} == expected
