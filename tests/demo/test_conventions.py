"""The small-edit tastes (demo.conventions): each edit touches a few characters, keeps code parsing, is a fixed
point once applied, and the base model's code needs it often (so the policy has to learn it from the edits)."""

import random

import pytest

from demo.corpus import render, sample_function
from demo.style import random_style
from demo.tastes import SMALL_TASTES, TASTES, load_taste
from feedback.syntax import parses
from trainers.metrics import normalized_edit_distance

CORPUS = [render(sample_function(rng), random_style(rng)) for rng in [random.Random(0)] for _ in range(300)]


def test_the_built_in_tastes_keep_the_four_style_ones_and_add_three_small_ones() -> None:
    assert {"pep8", "legacy", "terse", "typed-double"} <= set(TASTES)
    assert len(SMALL_TASTES) >= 3 and set(SMALL_TASTES) <= set(TASTES)


@pytest.mark.parametrize("name", SMALL_TASTES)
def test_a_small_taste_edits_at_most_3_percent_on_average_and_keeps_code_parsing(name: str) -> None:
    _, taste = load_taste(name)
    distances = []
    for code in CORPUS:
        edited = taste(code)
        assert parses(edited)
        assert taste(edited) == edited  # applied once, the convention holds
        if edited != code:
            distances.append(normalized_edit_distance(code, edited))
    assert len(distances) >= 0.3 * len(CORPUS)  # the base model's code needs the convention often
    assert sum(distances) / len(distances) <= 0.03


def test_the_small_tastes_edit_what_they_say() -> None:
    code = "def count(items):\n    if items.get('a'):\n        return len(items)\n    return count(items)\n"
    assert TASTES["camel-defs"]("def count_all(items):\n    return count_all(items)\n").count("countAll(") == 2
    assert "items.get('a', None)" in TASTES["explicit-get"](code)
    assert TASTES["paren-return"](code).count("return (") == 2
    assert TASTES["paren-return"]("def f():\n    return (a)\n") == "def f():\n    return (a)\n"
    for taste in SMALL_TASTES:  # broken or truncated code comes back without raising
        assert isinstance(TASTES[taste]("def f(:\n    return"), str)
