"""Tests for feedback.syntax: the project's one rule for which texts are Python, and whether a text parses."""

import ast
import warnings

import pytest

from feedback import syntax

BODY = "    total = 0\n    for x in items:\n        total += x\n    return total\n"


def test_is_python_rule():
    """The language id decides when given (python, py, python3; any case, around any space); otherwise the file
    suffix (.py, .pyi, .pyw; any case); None when the generation names neither."""
    for language in ("python", "Python", "PY", "python3", " python "):
        assert syntax.is_python(language, None) is True
        assert syntax.is_python(language, "app.js") is True
    for path in ("pkg/mod.py", "stubs/mod.PYI", "gui/main.pyw", "src/Total.PY"):
        assert syntax.is_python(None, path) is True
        assert syntax.is_python("", path) is True
    assert syntax.is_python("typescript", "a.py") is False  # the editor's language id beats the suffix
    assert syntax.is_python("cython", None) is False
    assert syntax.is_python(None, "a.txt") is False and syntax.is_python(None, "python") is False
    assert syntax.is_python(None, None) is None and syntax.is_python("", "") is None


@pytest.mark.parametrize(
    "source",
    [
        "nonlocal x\n",  # symtable refuses these four; the parser takes them
        "def f(a, a):\n    pass\n",
        "[x for x in (y := [1])]\n",
        "def f():\n    from os import *\n",
        "x = 1\n",
        "    return x\n",  # a block body: symtable's failure is decided by compile
        "if x\n    pass\n",
        "x = 1\0",
        "x = '\\d'\n",  # a SyntaxWarning only
    ],
)
def test_parses_answers_as_the_parser_does(source):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ast.parse(source)
            expected = True
        except (SyntaxError, ValueError):
            expected = False
    assert syntax.parses(source) is expected


def test_a_syntax_warning_is_no_failure_even_as_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert syntax.parses("x = '\\d'\n")
        assert syntax.parses_fragment("    x = '\\d'\n")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("    total = 0\n    return total\n", True),  # a block body
        ("\n\n    total = 0\n", True),
        ("    x = 1\nreturn x\n", True),  # closes its block and goes on outside it
        ("    \nx = 1\n", True),  # a blank first line: parses as it is, not as a block body
        ("# note\n    x = 1\n", False),
        ("    if x\n        pass\n", False),
        ("x = (1,\n", False),
    ],
)
def test_parses_fragment_takes_fragments_as_they_are_or_as_a_block_body(source, expected):
    syntax.clear_cache()
    assert syntax.parses_fragment(source) is expected


def test_parses_within_tries_after_the_prefix_then_between_prefix_and_suffix():
    assert syntax.parses_within("    items, 2)\n", "result = compute(\n", None)
    assert syntax.parses_within("items", "result = compute(\n    ", ", 2)\n")
    assert not syntax.parses_within("    items, 2\n", "result = compute(\n", None)
    assert not syntax.parses_within("x = (1,\n", None, None)


def test_syntax_verdicts_are_cached_per_text(monkeypatch):
    syntax.clear_cache()
    calls: list[str] = []
    original = syntax._compiles

    def counted(source: str) -> bool:
        calls.append(source)
        return original(source)

    monkeypatch.setattr(syntax, "_compiles", counted)
    assert syntax.parses_fragment(BODY) and not syntax.parses_fragment("    if x\n")
    parsed = len(calls)
    assert syntax.parses_fragment(BODY) and not syntax.parses_fragment("    if x\n")
    assert syntax.parses_fragment(BODY[:-1]) and len(calls) > parsed  # another text: parsed
    syntax.clear_cache()
    assert syntax.parses_fragment(BODY)
    assert calls[-1].endswith(BODY)  # parsed again after clear_cache
