"""Lazy package namespaces: a name is imported from its module the first time it is used.

`import clip_trl` then costs almost nothing (no torch, transformers, datasets or matplotlib): `clip-trl --help`
answers at once, and a script pays for the trainer only when it touches one. As in trl's and transformers'
`__init__`, each package lists where its public names live (`_import_structure`); type checkers and IDEs read the
same names from an `if TYPE_CHECKING:` block beside it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_namespace(
    package: str, import_structure: Mapping[str, list[str]], submodules: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`(__getattr__, __dir__, __all__)` for `package`, resolving each name of `import_structure`
    (`{"module.path": ["Name", ...]}`, module paths relative to the package) and each of `submodules` on first use.
    """
    where = {name: module for module, names in import_structure.items() for name in names}
    public = sorted([*where, *submodules])

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(importlib.import_module(package), name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*public, *globals_of(package)})

    return __getattr__, __dir__, public


def globals_of(package: str) -> list[str]:
    return list(vars(importlib.import_module(package)))
