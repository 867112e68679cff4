"""The style axes of Python code, and reading them back from any code (`detect`, `follows`).

Every axis is independent of the others. The readers take arbitrary code, model output included, and never raise on
bad input: the worst case is "cannot tell" (None).

Conventions the axes follow (and the readers assume):
- docstrings are always triple double quotes (PEP 257), so the `quotes` axis is about ordinary literals only;
- a string whose text contains a quote character is no evidence for `quotes` (its delimiter is forced);
- `fstrings=False` means `"...".format(...)`; %-formatting is neither and is left alone.
"""

import random
from collections import Counter
from dataclasses import dataclass
from tokenize import STRING

from demo.tokens import Source, defined_names, naming_of, split_string

AXES: dict[str, tuple] = {
    "naming": ("snake", "camel"),
    "type_hints": (True, False),
    "quotes": ("single", "double"),
    "fstrings": (True, False),
    "docstrings": (True, False),
}


@dataclass(frozen=True)
class Style:
    naming: str = "snake"
    type_hints: bool = True
    quotes: str = "double"
    fstrings: bool = True
    docstrings: bool = True

    def __post_init__(self) -> None:
        for axis in AXES:
            check_value(axis, getattr(self, axis))


def check_value(axis: str, value: object) -> None:
    if axis not in AXES:
        raise ValueError(f"unknown style axis {axis!r}; axes are {', '.join(AXES)}")
    # `1 in (True, False)` is true in Python, so compare types as well as values.
    if not any(value == v and type(value) is type(v) for v in AXES[axis]):
        raise ValueError(f"{axis} must be one of {AXES[axis]}, got {value!r}")


def random_style(rng: random.Random) -> Style:
    return Style(**{axis: rng.choice(values) for axis, values in AXES.items()})


def _evidence(code: str) -> dict[str, Counter]:
    """For each axis, how many places in the code show each value."""
    src = Source(code)
    toks = src.toks
    evidence: dict[str, Counter] = {axis: Counter() for axis in AXES}
    for name in defined_names(src):
        value = naming_of(name)
        if value:
            evidence["naming"][value] += 1
    docstrings = set()
    for d in src.defs:
        if d.colon is not None:
            annotatable = [p for i, p in enumerate(d.params) if not (i == 0 and toks[p.name].string in ("self", "cls"))]
            annotated = sum(p.annotation is not None for p in annotatable) + (d.returns is not None)
            if annotated == len(annotatable) + 1:
                evidence["type_hints"][True] += 1
            elif annotated == 0:
                evidence["type_hints"][False] += 1
            else:  # partly annotated follows neither rule
                evidence["type_hints"].update((True, False))
        if d.decidable_docstring:
            evidence["docstrings"][d.docstring is not None] += 1
            docstrings.add(d.docstring)
    for i, t in enumerate(toks):
        if t.type != STRING or i in docstrings:
            continue
        parts = split_string(t.string)
        if parts is None:
            continue
        prefix, quote, body = parts
        if len(quote) == 1 and "'" not in body and '"' not in body:
            evidence["quotes"]["double" if quote == '"' else "single"] += 1
        if "f" in prefix.lower():
            evidence["fstrings"][True] += 1
        elif i + 3 < len(toks) and [x.string for x in toks[i + 1 : i + 4]] == [".", "format", "("]:
            evidence["fstrings"][False] += 1
    return evidence


def detect(code: str) -> dict[str, object]:
    """Each axis's value as the code shows it (the majority where it mixes), or None where it cannot tell."""
    try:
        evidence = _evidence(code)
    except Exception:  # a bug here must not break a caller scoring model output
        return dict.fromkeys(AXES)
    result: dict[str, object] = {}
    for axis, counts in evidence.items():
        ranked = counts.most_common()
        if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
            result[axis] = None
        else:
            result[axis] = ranked[0][0]
    return result


def follows(code: str, axis: str, value: object) -> bool | None:
    """Whether every place in the code that shows `axis` has `value`; None when nothing shows it."""
    check_value(axis, value)
    try:
        counts = _evidence(code)[axis]
    except Exception:
        return None
    if not counts:
        return None
    return all(v == value for v in counts)
