"""The packages export their names lazily (PEP 562): every public name still resolves, and a Ray worker
that runs only the id registry, the progress counter or a read / prepare / write task imports no torch.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("embedder", "storage", "cluster")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_to_its_module_object(package: str) -> None:
    pkg = importlib.import_module(package)
    assert pkg.__all__, package
    module_of = {name: module for module, names in pkg._EXPORTS.items() for name in names}
    assert sorted(module_of) == pkg.__all__
    for name in pkg.__all__:
        value = getattr(pkg, name)
        defining = importlib.import_module(f"{package}.{module_of[name]}")
        assert value is getattr(defining, name), (package, name)
    assert set(pkg.__all__) <= set(dir(pkg))


@pytest.mark.parametrize("package", PACKAGES)
def test_an_unknown_name_is_an_attribute_error_naming_it(package: str) -> None:
    pkg = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"{package}.*no_such_name"):
        _ = pkg.no_such_name


@pytest.mark.parametrize(
    "modules",
    [
        # what the registry and counter actors and the pipeline's tasks unpickle; the encoder actor's
        # constructor imports torch itself (``cluster._stages.load_encoder``)
        ("cluster._registry", "cluster._progress", "cluster._stages", "cluster._sink", "cluster._sources"),
        ("jobs.cli",),  # the driver: torch only where a command encodes in it (a quality map, a plan's probe)
    ],
)
def test_these_modules_import_no_torch(modules: tuple[str, ...]) -> None:
    code = (
        f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
        "print(sorted(k for k in ('torch', 'transformers') if k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]", out
