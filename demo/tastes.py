"""The simulated users' tastes: a taste is any function from code to the user's edited code. The built-in ones
restyle code along the style axes (`demo.style.AXES`) or apply small conventions (`demo.conventions`: edits of a
few tokens); `load_taste` also takes `module:function`."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidInput
from demo.conventions import apply_conventions
from demo.restyle import restyle

Taste = Callable[[str], str]


@dataclass(frozen=True)
class BuiltinTaste:
    description: str
    axes: dict[str, Any]
    conventions: tuple[str, ...] = field(default=())

    def __call__(self, code: str) -> str:
        code = restyle(code, **self.axes) if self.axes else code
        return apply_conventions(code, self.conventions) if self.conventions else code


TASTES: dict[str, BuiltinTaste] = {
    "pep8": BuiltinTaste(
        "snake_case names, type hints and docstrings",
        {"naming": "snake", "type_hints": True, "docstrings": True},
    ),
    "legacy": BuiltinTaste(
        "camelCase names, str.format() instead of f-strings, double quotes",
        {"naming": "camel", "fstrings": False, "quotes": "double"},
    ),
    "terse": BuiltinTaste("no docstrings and no type hints", {"docstrings": False, "type_hints": False}),
    "typed-double": BuiltinTaste("type hints and double quotes", {"type_hints": True, "quotes": "double"}),
    # Small edits (about 1% of a completion's characters): one convention each, of three kinds.
    "camel-defs": BuiltinTaste(
        "identifier convention: function names in camelCase, other names as they are", {}, ("camel_defs",)
    ),
    "explicit-get": BuiltinTaste(
        "idiom swap: dict lookups spell their default, `x.get('k', None)`", {}, ("explicit_get",)
    ),
    "paren-return": BuiltinTaste("formatting convention: returned values in parentheses", {}, ("paren_returns",)),
}
SMALL_TASTES = ("camel-defs", "explicit-get", "paren-return")


def load_taste(spec: str) -> tuple[str, Taste]:
    """A built-in taste by name, or `module:function` (importable, taking code and returning the edited code)."""
    if spec in TASTES:
        return f"{spec}: {TASTES[spec].description}", TASTES[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(f"taste: {spec!r} is neither a built-in ({', '.join(TASTES)}) nor module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"taste: cannot import {module_name!r}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise InvalidInput(f"taste: {module_name} has no function {attr!r}")
    return spec, function
