"""Type checks of the configs' numeric and boolean fields, run first in [`ClipBaseConfig.__post_init__`].

A wrong type (`learning_rate="fast"`) would otherwise surface deep inside `TrainingArguments.__post_init__` or
the first training step as a bare `TypeError: '<=' not supported between instances of 'float' and 'str'`. The
fields checked are derived from the dataclass's type annotations, so every config (and a user's subclass) is
covered: each field annotated `int`, `float` or `bool` (optionally `| None`), and `list[int]` / `list[float]`.
Fields whose annotation also admits other types (`str | bool`, enums) are left to their own checks.

Strings are read the way `HfArgumentParser` reads the same flag on the command line, then stored converted:
`"1e-4"` for a float, `"3"` for an int, `"true"` / `"no"` / `"1"` for a bool. That keeps configs loaded from
YAML usable (PyYAML reads `1e-4`, without a dot, as a string) and makes `Config(**yaml_dict)` agree with
`--config file.yaml`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

_KINDS = {int: "an integer", float: "a float", bool: "a bool (True or False)"}
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


@dataclasses.dataclass(frozen=True)
class _Check:
    kind: type  # int, float or bool
    optional: bool
    is_list: bool
    example: str = ""  # the field's default, quoted in the error ("such as its default 1e-05")


def _scalar(annotation: Any) -> tuple[type, bool] | None:
    """`(int|float|bool, optional)` when the annotation is exactly one of them, with or without `None`."""
    if annotation in _KINDS:
        return annotation, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1 and args[0] in _KINDS and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return None


def _check_for(annotation: Any) -> _Check | None:
    scalar = _scalar(annotation)
    if scalar is not None:
        return _Check(scalar[0], scalar[1], is_list=False)
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) != 1 or len(typing.get_args(annotation)) != 2:
            return None
        annotation, optional = args[0], True
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (None,)
        if item in (int, float):
            return _Check(item, optional, is_list=True)
    return None


@functools.cache
def field_checks(cls: type) -> dict[str, _Check]:
    """The checked fields of a config dataclass, by name (computed once per class)."""
    hints = typing.get_type_hints(cls)
    checks = {}
    for f in dataclasses.fields(cls):
        if f.init and f.name in hints:
            check = _check_for(hints[f.name])
            if check is not None:
                ok, _ = _convert(f.default, check.kind) if not check.is_list else (False, None)
                shown = ok and check.kind is not bool and not isinstance(f.default, str)
                example = f", like its default {f.default!r}" if shown else ""
                checks[f.name] = dataclasses.replace(check, example=example)
    return checks


def _convert(value: Any, kind: type) -> tuple[bool, Any]:
    """`(ok, value)`: the value as `kind`, reading strings as HfArgumentParser would."""
    if kind is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return True, value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):  # as the strings "0" / "1"
            return True, bool(value)
        return False, value
    if isinstance(value, bool):
        return False, value  # True is an int to Python, never a learning rate or a step count
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            return False, value
        return True, value
    if kind is float:
        return isinstance(value, (int, float)), value
    if isinstance(value, int):
        return True, value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return True, int(value)  # `max_steps=10.0`: a whole number, stored as the int it means
    return False, value


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_field_types(config: Any) -> None:
    """Check (and convert numeric strings of) every int / float / bool field of `config`; a `TypeError` names
    the first wrong field, the type it wants and the value it got.

    Example:

    ```python
    >>> from clip_trl import ClipRLConfig
    >>> ClipRLConfig(output_dir="out", learning_rate="1e-4").learning_rate
    0.0001
    >>> ClipRLConfig(output_dir="out", learning_rate="fast")
    Traceback (most recent call last):
    ...
    TypeError: ClipRLConfig: `learning_rate` must be a float, like its default 1e-05, got 'fast' (str).

    ```
    """
    cls = type(config)
    for name, check in field_checks(cls).items():
        value = getattr(config, name)
        if value is None and check.optional:
            continue
        wants = _KINDS[check.kind] + (" or None" if check.optional else "")
        if check.is_list:
            if not isinstance(value, (list, tuple)):
                raise TypeError(
                    f"{cls.__name__}: `{name}` must be a list of {_plural(check.kind)}"
                    f"{' or None' if check.optional else ''}, got {_describe(value)}."
                )
            converted = []
            for index, item in enumerate(value):
                ok, item_value = _convert(item, check.kind)
                if not ok:
                    raise TypeError(
                        f"{cls.__name__}: `{name}[{index}]` must be {_KINDS[check.kind]}, got {_describe(item)}."
                    )
                converted.append(item_value)
            setattr(config, name, converted)
            continue
        ok, converted_value = _convert(value, check.kind)
        if not ok:
            raise TypeError(
                f"{cls.__name__}: `{name}` must be {wants}{check.example}, got {_describe(value)}."
            )
        setattr(config, name, converted_value)


def _plural(kind: type) -> str:
    return {int: "integers", float: "floats"}[kind]
