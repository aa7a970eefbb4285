"""A package's public names imported on first use (PEP 562): the one rule ``embedder``, ``storage`` and
``cluster`` export by, so that a process needing one part (a Ray worker running the id registry or a write task)
does not import the rest (torch, transformers) through the package."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]], namespace: dict[str, Any]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``, whose public names are ``exports`` (each
    private module's names); ``namespace`` is the package's ``globals()``, where a name is kept once imported.

    In a package's ``__init__.py``::

        __all__, __getattr__, __dir__ = lazy_exports(__name__, {"_errors": ("ClusterError",)}, globals())
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        namespace[name] = value  # the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})

    return sorted(module_of), __getattr__, __dir__
