"""The synthetic style corpus: renders are valid Python in every style, each axis is detectable and independent of
the others, restyle moves exactly one axis (matching the renderer where it can), and odd input never raises."""

import ast
import itertools
import random
from collections import Counter
from dataclasses import replace

import pytest

from demo.corpus import _FAMILIES, Function, corpus, prompt_for, render, sample_function, style_pair
from demo.restyle import restyle
from demo.style import AXES, Style, detect, follows, random_style

ALL_STYLES = [Style(**dict(zip(AXES, values, strict=True))) for values in itertools.product(*AXES.values())]


def functions(n: int, seed: int = 0) -> list[Function]:
    rng = random.Random(seed)
    return [sample_function(rng) for _ in range(n)]


def every_variant() -> list[Function]:
    """One function per template variant, so rare variants are always covered."""
    rng = random.Random(7)
    out = []
    for template, family in _FAMILIES.items():
        for variant in range(len(family.variants)):
            fn = sample_function(rng)
            while fn.template != template:
                fn = sample_function(rng)
            out.append(replace(fn, variant=variant))
    return out


def other(axis: str, value: object) -> object:
    return next(v for v in AXES[axis] if v != value)


def visible(fn: Function, axis: str) -> bool:
    """Whether the function can show the axis at all (a function without string literals has no quote style)."""
    return any(detect(render(fn, style))[axis] is not None for style in ALL_STYLES[:8] + ALL_STYLES[-8:])


def test_templates_are_many_and_each_shows_formatted_strings_often() -> None:
    assert len(_FAMILIES) >= 10
    by_template = Counter(fn.template for fn in every_variant())
    formatted = Counter(fn.template for fn in every_variant() if detect(render(fn, Style()))["fstrings"] is not None)
    for template, variants in by_template.items():
        assert formatted[template] * 2 >= variants, template  # variants are drawn uniformly


def test_every_render_parses_in_every_style() -> None:
    for fn in every_variant() + functions(60):
        for style in ALL_STYLES:
            code = render(fn, style)
            assert code.startswith("def ") and code.endswith("\n") and not code.endswith("\n\n")
            ast.parse(prompt_for(fn) + code)


def test_detect_reads_back_every_axis_and_axes_are_independent() -> None:
    for fn in every_variant() + functions(10, seed=1):
        for style in ALL_STYLES:
            seen = detect(render(fn, style))
            for axis in AXES:
                assert seen[axis] in (None, getattr(style, axis)), (axis, style, render(fn, style))
            # these three show in every function; quotes and f-strings need a string literal / formatted string
            assert seen["naming"] == style.naming
            assert seen["type_hints"] == style.type_hints
            assert seen["docstrings"] == style.docstrings


def test_prompt_fixes_no_axis() -> None:
    for fn in functions(50):
        prompt = prompt_for(fn)
        assert prompt.startswith("# ") and prompt.endswith("\n") and prompt.count("\n") == 1
        assert detect(prompt) == dict.fromkeys(AXES)


@pytest.mark.parametrize("axis", list(AXES))
def test_restyle_moves_one_axis_and_matches_the_renderer(axis: str) -> None:
    rng = random.Random(axis)
    for fn in every_variant() + functions(30, seed=2):
        style = random_style(rng)
        for value in AXES[axis]:
            target = replace(style, **{axis: value})
            code = prompt_for(fn) + render(fn, style)
            got = restyle(code, **{axis: value})
            ast.parse(got)
            seen, before = detect(got), detect(code)
            for other_axis in AXES:
                if other_axis != axis:
                    assert seen[other_axis] == before[other_axis], (other_axis, got)
            if before[axis] is not None:
                assert seen[axis] == value, got
            if axis == "type_hints" and value and not style.type_hints:
                # the types are guessed from names and literals: right kind of code, not necessarily the same text
                continue
            # the docstring comes from the comment above the function, which is the prompt
            assert got == prompt_for(fn) + render(fn, target)


def test_restyle_all_axes_at_once_round_trips() -> None:
    rng = random.Random(3)
    for fn in functions(100, seed=3):
        start, goal = random_style(rng), random_style(rng)
        code = prompt_for(fn) + render(fn, start)
        got = restyle(code, **{axis: getattr(goal, axis) for axis in AXES})
        ast.parse(got)
        seen = detect(got)
        for axis in AXES:
            assert seen[axis] in (None, getattr(goal, axis))
        if goal.type_hints or not start.type_hints:  # else the way back would have to guess the types
            assert restyle(got, **{axis: getattr(start, axis) for axis in AXES}) == code


def test_restyle_type_hints_guesses_plausible_types() -> None:
    code = render(replace(functions(1)[0], template="find", variant=1), Style(type_hints=False))
    typed = restyle(code, type_hints=True)
    header = typed.splitlines()[0]
    assert ": list[dict]" in header and ": str" in header, typed
    assert restyle(typed, type_hints=False) == code
    assert restyle("def area(width, height=2.5):\n    return width * height / 2\n", type_hints=True) == (
        "def area(width: int, height: float = 2.5) -> float:\n    return width * height / 2\n"
    )
    method = "class A:\n    def run(self, count=3):\n        pass\n"
    assert restyle(method, type_hints=True) == "class A:\n    def run(self, count: int = 3) -> None:\n        pass\n"


def test_corpus_is_neutral_and_deterministic() -> None:
    docs = corpus(2000, seed=11)
    assert docs == corpus(2000, seed=11) and docs != corpus(2000, seed=12)
    seen = [detect(doc) for doc in docs]
    for axis, values in AXES.items():
        counts = Counter(s[axis] for s in seen if s[axis] is not None)
        shown = sum(counts.values())
        assert shown >= 1000, axis  # every axis is visible in at least half the documents
        for value in values:
            assert 0.4 <= counts[value] / shown <= 0.6, (axis, counts)


def test_style_pairs_differ_in_their_axis_only() -> None:
    rng = random.Random(5)
    for axis, values in AXES.items():
        for value in values:
            for _ in range(20):
                prompt, chosen, rejected = style_pair(rng, axis, value)
                assert prompt.startswith("# ") and chosen != rejected
                assert follows(chosen, axis, value) is True
                assert follows(rejected, axis, value) is False
                a, b = detect(chosen), detect(rejected)
                assert {k for k in AXES if a[k] != b[k]} == {axis}
    with pytest.raises(ValueError):
        style_pair(rng, "naming", "kebab")


def test_semantics_survive_string_rewrites() -> None:
    code = (
        "def show(total_price, item_name, pairs):\n"
        "    first = f'{item_name!r:>12} costs {total_price:.2f} {{EUR}}'\n"
        "    second = '{} and {name}'.format(total_price + 1, name=item_name.upper())\n"
        "    third = '{0}/{0}/{1.real}'.format(total_price, 3)\n"
        "    fourth = f'{pairs[0], pairs[1]}' + f'{len(pairs)}'\n"
        "    return [first, second, third, fourth]\n"
    )

    def run(source: str) -> list[str]:
        scope: dict = {}
        exec(source, scope)
        return scope[next(k for k in scope if k != "__builtins__")](2.5, "lamp", ("a", "b"))

    expected = run(code)
    for axes in [{"fstrings": False}, {"fstrings": True}, {"quotes": "double"}, {"naming": "camel"}]:
        got = restyle(code, **axes)
        assert run(got) == expected, got
        assert run(restyle(got, fstrings=not axes.get("fstrings", True))) == expected
    assert "format" not in restyle(code, fstrings=True)
    assert "f'" not in restyle(code, fstrings=False) and 'f"' not in restyle(code, fstrings=False)


def test_restyle_handles_code_it_did_not_write() -> None:
    code = (
        "import json\n\n"
        "@staticmethod\n"
        "def loadUserData(filePath: str, *extraArgs, retryCount: int = 2, **moreOptions) -> dict:\n"
        "    '''Load it.'''\n"
        "    with open(filePath) as fileHandle:\n"
        "        rawData = json.load(fileHandle)\n"
        "    parsedRows = [rowItem for rowItem in rawData if rowItem]\n"
        '    message = "it\'s %s" % filePath\n'
        "    return {'rows': parsedRows, 'msg': message, 'n': retryCount}\n"
    )
    snake = restyle(code, naming="snake")
    assert "def load_user_data(file_path: str, *extra_args, retry_count: int = 2, **more_options)" in snake
    assert "json.load(file_handle)" in snake and "[row_item for row_item in raw_data if row_item]" in snake
    assert restyle(snake, naming="camel") == code
    single = restyle(code, quotes="double")
    assert "'''Load it.'''" in single and '"it\'s %s"' in single and '{"rows": parsedRows' in single
    bare = restyle(code, type_hints=False, docstrings=False)
    assert "def loadUserData(filePath, *extraArgs, retryCount=2, **moreOptions):\n    with" in bare
    for axes in itertools.product(*AXES.values()):
        ast.parse(restyle(code, **dict(zip(AXES, axes, strict=True))))


ODD_INPUTS = [
    "",
    " ",
    "\n\n\n",
    "def",
    "def f(",
    "def f(a: int = ",
    "def f(x) -> :\n",
    "def f():\n",
    "def f():\n    '''unterminated",
    "x = 'abc",
    'x = f"{a"\n',
    'x = f"{a!}"\n',
    'x = "{}".format(\n',
    'x = "{0} {}".format(1, 2)\n',
    "größe_wert = 'ä'\ndef grüße_sagen(name_ü):\n    return f'{name_ü}'\n",
    "Just some prose, it's not code at all: 50% (maybe) {braces} [and] 'quotes\".",
    "\x00\x01 binary \xff",
    "(" * 500 + "x" + ")" * 500,
    "def f():\n\treturn 1\n        return 2\n",
    "def f(a, b):\r\n    return a + b\r\n",
    "if x:\n  y = 1\n else:\n",
    "class Foo:\n    def bar(self): return 'x'\n",
    "lambda x: x",
    "@@@ $$$ ??? `backticks`",
    "def f(*, a, /, b):\n    pass\n",
    'def f():\n    "only a docstring"\n',
]


@pytest.mark.parametrize("code", ODD_INPUTS)
def test_odd_input_never_raises(code: str) -> None:
    assert set(detect(code)) == set(AXES)
    for axis, values in AXES.items():
        for value in values:
            assert follows(code, axis, value) in (None, True, False)
            out = restyle(code, **{axis: value})
            assert isinstance(out, str)
            try:
                ast.parse(code)
            except (SyntaxError, ValueError):
                continue
            ast.parse(out)  # valid code stays valid


def test_truncated_renders_are_read_without_contradiction() -> None:
    """Model output stops mid-function: what detect reads from a prefix never contradicts the full style."""
    rng = random.Random(9)
    for fn in functions(25, seed=9):
        style = random_style(rng)
        code = prompt_for(fn) + render(fn, style)
        for cut in range(0, len(code), 9):
            part = code[:cut]
            seen = detect(part)
            for axis in AXES:
                assert seen[axis] in (None, getattr(style, axis)), (axis, part)
                restyle(part, **{axis: other(axis, getattr(style, axis))})


def test_invalid_axes_are_refused() -> None:
    with pytest.raises(ValueError):
        restyle("x = 1\n", naming="kebab")
    with pytest.raises(ValueError):
        restyle("x = 1\n", colour="red")
    with pytest.raises(ValueError):
        Style(type_hints=1)
    with pytest.raises(ValueError):
        follows("x = 1\n", "quotes", "backtick")
