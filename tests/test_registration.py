"""Registration with transformers (`storm_hf.registration`) and the direction of imports between storm_hf's layers."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "storm_hf"

# Dependencies point one way: a module may import storm_hf modules of its own layer or below. `registration` and the
# package `__init__` sit on top: they tie the layers together for transformers.
LAYERS = {
    "storm_hf.modeling": 0,
    "storm_hf.processing": 1,
    "storm_hf.accounting": 2,
    "storm_hf.conversion": 2,
    "storm_hf.hub": 2,
    "storm_hf.integrations": 2,
    "storm_hf.pipelines": 2,
    "storm_hf.streaming": 2,
    "storm_hf.synthetic": 2,
    "storm_hf.training": 2,
    "storm_hf.commands": 3,
    "storm_hf.registration": 4,
    "storm_hf": 4,
}


def layer(module: str) -> int | None:
    """The layer of `module` (by its longest listed prefix), None if no prefix is listed."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    return None


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """The storm_hf modules the file `path` of the package at `root` imports anywhere (inside functions too)."""

    def is_module(name: str) -> bool:
        location = root.parent.joinpath(*name.split("."))
        return location.with_suffix(".py").is_file() or (location / "__init__.py").is_file()

    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:  # `from package import name` imports the submodule `name` if there is one
                names.add(f"{module}.{alias.name}" if is_module(f"{module}.{alias.name}") else module)
    return {name for name in names if name == "storm_hf" or name.startswith("storm_hf.")}


def test_every_module_imports_only_its_own_layer_or_below():
    violations, unplaced = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        if layer(importer) is None:
            unplaced.add(importer)
            continue
        for imported in imported_modules(path):
            if layer(imported) is None:
                unplaced.add(imported)
            elif layer(imported) > layer(importer):
                violations.append(f"{importer} (layer {layer(importer)}) imports {imported} (layer {layer(imported)})")
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {sorted(unplaced)}"
    assert not violations, violations


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    root = tmp_path / "storm_hf"
    (root / "processing").mkdir(parents=True)
    for name in ("__init__.py", "pipelines.py", "processing/__init__.py", "processing/token_budget.py"):
        (root / name).touch()
    late = root / "processing" / "late.py"
    late.write_text("import os\n\ndef f():\n    from ..pipelines import Pipeline\n    from . import token_budget\n")
    assert imported_modules(late, root) == {"storm_hf.pipelines", "storm_hf.processing.token_budget"}


@pytest.mark.parametrize("package", ["storm_hf.modeling", "storm_hf.processing"])
def test_a_layer_imports_nothing_above_it(package):
    """Import one layer in a fresh interpreter without the package `__init__` (which imports everything) and list the
    storm_hf modules that were loaded."""
    script = (
        "import sys, types\n"
        "root = types.ModuleType('storm_hf')\n"
        f"root.__path__ = [{str(PACKAGE)!r}]\n"
        "sys.modules['storm_hf'] = root\n"
        f"import {package}\n"
        "print(' '.join(sorted(name for name in sys.modules if name.startswith('storm_hf.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = result.stdout.split()
    assert package in loaded
    assert "storm_hf.pipelines" not in loaded
    above = [name for name in loaded if layer(name) > layer(package)]
    assert not above, f"importing {package} loaded {above}"


def test_only_the_registration_module_registers():
    calls = ("register", "register_for_auto_class", "register_pipeline")
    registering = {
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in calls
        and ast.unparse(node.func) != "registration.register"  # what `storm_hf/__init__.py` runs
    }
    assert registering == {"storm_hf.registration"}


def test_import_storm_hf_alone_registers_everything(demo_checkpoint):
    """In a fresh interpreter, `import storm_hf` is all it takes for the Auto classes and `pipeline` to load a STORM
    checkpoint (which carries no `auto_map`) with storm_hf's own classes; before the import, transformers knows none."""
    script = """
import sys
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoVideoProcessor
from transformers import pipeline

checkpoint = sys.argv[1]
assert "storm" not in CONFIG_MAPPING
import storm_hf

loaded = [
    AutoConfig.from_pretrained(checkpoint),
    AutoModelForImageTextToText.from_pretrained(checkpoint),
    AutoProcessor.from_pretrained(checkpoint),
    AutoVideoProcessor.from_pretrained(checkpoint),
    pipeline("video-text-to-text", model=checkpoint),
]
print(" ".join(f"{type(obj).__module__}.{type(obj).__name__}" for obj in loaded))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(demo_checkpoint)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [
        "storm_hf.modeling.configuration_storm.StormConfig",
        "storm_hf.modeling.modeling_storm.StormForConditionalGeneration",
        "storm_hf.processing.processing_storm.StormProcessor",
        "storm_hf.processing.video_processing_storm.StormVideoProcessor",
        "storm_hf.pipelines.VideoTextToTextPipeline",
    ]


def test_ci_tests_the_lowest_and_the_newest_release_the_requirement_allows():
    """`.ci/run` runs the suite on both ends of setup.cfg's transformers requirement (transformers_versions.py)."""
    import transformers
    from packaging.requirements import Requirement

    spec = importlib.util.spec_from_file_location(
        "transformers_versions", ROOT / "scripts" / "transformers_versions.py"
    )
    versions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(versions)

    requirement = versions.transformers_requirement()
    assert requirement.name == "transformers"
    assert transformers.__version__ in requirement.specifier  # the environment runs a supported release
    index = ["5.25.0rc1", "5.24.1", "5.24.0", "5.23.0", "5.22.2", "4.57.6"]
    allowed = versions.allowed_releases(Requirement("transformers>=5.23,<5.25"), index)
    assert [str(version) for version in allowed] == ["5.23.0", "5.24.0", "5.24.1"]
    with pytest.raises(SystemExit, match="No transformers release"):
        versions.allowed_releases(Requirement("transformers>=6"), index)
