"""A synthetic Python corpus whose style varies along independent axes, and tools that read and change that style.

The bootstrap model is pretrained on this corpus, so every document draws every axis uniformly: the base model must
be neutral, or a later preference could not be told from a prior. A simulated editor's "taste" is `restyle` towards
fixed values, and `style_pair` gives preference pairs that differ in exactly one axis.

`detect`, `follows` and `restyle` take arbitrary code, model output included (truncated, broken, not Python at all).
They read tokens rather than an AST, because a truncated function has no AST but still shows its style, and they
never raise on bad input: the worst case is "cannot tell" (None) or the code handed back unchanged.

Conventions the axes follow (and the detectors assume):
- docstrings are always triple double quotes (PEP 257), so the `quotes` axis is about ordinary literals only;
- a string whose text contains a quote character is no evidence for `quotes` (its delimiter is forced);
- `fstrings=False` means `"...".format(...)`; %-formatting is neither and is left alone.
"""

import ast
import builtins
import io
import keyword
import random
import re
import string
import textwrap
import tokenize
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from tokenize import DEDENT, ENDMARKER, INDENT, NAME, NEWLINE, NUMBER, STRING, TokenInfo
from typing import Any

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
            _check_value(axis, getattr(self, axis))


def _check_value(axis: str, value: object) -> None:
    if axis not in AXES:
        raise ValueError(f"unknown style axis {axis!r}; axes are {', '.join(AXES)}")
    # `1 in (True, False)` is true in Python, so compare types as well as values.
    if not any(value == v and type(value) is type(v) for v in AXES[axis]):
        raise ValueError(f"{axis} must be one of {AXES[axis]}, got {value!r}")


def random_style(rng: random.Random) -> Style:
    return Style(**{axis: rng.choice(values) for axis, values in AXES.items()})


# ---------------------------------------------------------------------------------------------------------------
# Templates
#
# A template is written once in a canonical form: snake_case, 'single' quotes as string markers, f'...' for
# formatted strings, with ${word} holes for the sampled names. The renderer restyles that form; it never parses
# Python, so it stays independent of `restyle`, and the tests can check one against the other.

# fmt: off
_NOUNS = (
    "order", "user", "item", "record", "event", "invoice", "ticket", "task", "product", "message", "account",
    "session", "payment", "booking", "review", "comment", "device", "job", "note", "shipment", "request", "report",
    "customer", "post",
)
_ADJECTIVES = (
    "active", "valid", "pending", "recent", "open", "paid", "large", "stale", "urgent", "public", "hidden",
    "visible", "archived", "failed", "flagged", "approved", "expired", "shared", "blocked", "verified",
)
_NUMBER_FIELDS = (
    "price", "amount", "score", "size", "weight", "duration", "quantity", "cost", "rating", "priority", "age", "level",
)
_TEXT_FIELDS = (
    "name", "title", "label", "email", "status", "owner", "city", "category", "region", "author", "topic", "country",
)
# fmt: on
_UNITS = ("EUR", "USD", "kg", "km", "points", "minutes", "units", "items")


def _plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith("s") else "s")


@dataclass(frozen=True)
class _Variant:
    description: str
    name: str
    params: tuple[tuple[str, str, str | None], ...]  # (name, annotation, canonical default or None)
    returns: str
    body: str


@dataclass(frozen=True)
class _Family:
    verbs: tuple[str, ...]
    variants: tuple[_Variant, ...]


def _v(description: str, name: str, params: tuple, returns: str, body: str) -> _Variant:
    return _Variant(description, name, params, returns, textwrap.dedent(body).strip("\n"))


_ITEMS = ("${nouns}", "list[dict]", None)

# fmt: off
# Every family has a formatted string in at least half of its variants, so the f-string axis shows often.
_FAMILIES: dict[str, _Family] = {
    "total": _Family(
        ("compute", "sum", "tally", "calculate"),
        (
            _v("${verb} the total ${field} of ${adj} ${nouns}", "${verb}_${adj}_${field}_total", (_ITEMS,), "float",
               r"""
                total_${field} = 0.0
                for ${noun} in ${nouns}:
                    if ${noun}.get('${adj}'):
                        total_${field} += ${noun}.get('${field}', 0)
                return total_${field}
            """),
            _v("${verb} the total ${field} of ${adj} ${nouns} as text", "${verb}_${adj}_${field}_summary", (_ITEMS,),
               "str", r"""
                total_${field} = 0.0
                for ${noun} in ${nouns}:
                    if ${noun}.get('${adj}'):
                        total_${field} += ${noun}.get('${field}', 0)
                return f'total ${field}: {total_${field}:.2f}'
            """),
            _v("${verb} the total ${field} of ${adj} ${nouns} above a minimum", "${verb}_${adj}_${field}_total",
               (_ITEMS, ("min_${field}", "float", "0.0")), "float", r"""
                if min_${field} < 0:
                    raise ValueError(f'negative minimum: {min_${field}}')
                ${field}_values = [${noun}.get('${field}', 0) for ${noun} in ${nouns} if ${noun}.get('${adj}')]
                return sum(value for value in ${field}_values if value >= min_${field})
            """),
        ),
    ),
    "filter": _Family(
        ("select", "filter", "keep", "collect"),
        (
            _v("${verb} the ${adj} ${nouns}", "${verb}_${adj}_${nouns}", (_ITEMS,), "list[dict]", r"""
                ${adj}_${nouns} = [${noun} for ${noun} in ${nouns} if ${noun}.get('${adj}')]
                if not ${adj}_${nouns}:
                    raise LookupError(f'no ${adj} ${nouns} among {len(${nouns})}')
                return ${adj}_${nouns}
            """),
            _v("${verb} the ${nouns} with at least a given ${field}", "${verb}_${nouns}_by_${field}",
               (_ITEMS, ("min_${field}", "int", "${number}")), "list[dict]", r"""
                return [${noun} for ${noun} in ${nouns} if ${noun}.get('${field}', 0) >= min_${field}]
            """),
            _v("${verb} the ${texts} of ${adj} ${nouns} as labels", "${verb}_${adj}_${text}_labels", (_ITEMS,),
               "list[str]", r"""
                ${text}_values = [${noun}.get('${text}', '?') for ${noun} in ${nouns} if ${noun}.get('${adj}')]
                return [f'${adj}: {value}' for value in ${text}_values]
            """),
        ),
    ),
    "index": _Family(
        ("index", "map", "key", "register"),
        (
            _v("${verb} ${adj} ${nouns} under numbered keys", "${verb}_${adj}_${nouns}",
               (_ITEMS, ("key_prefix", "str", "'${noun}'")), "dict[str, dict]", r"""
                ${noun}_index = {}
                for position, ${noun} in enumerate(${nouns}):
                    if ${noun}.get('${adj}'):
                        ${noun}_index[f'{key_prefix}-{position}'] = ${noun}
                return ${noun}_index
            """),
            _v("${verb} ${adj} ${nouns} by ${text}", "${verb}_${adj}_${nouns}_by_${text}", (_ITEMS,),
               "dict[str, dict]", r"""
                return {${noun}['${text}']: ${noun} for ${noun} in ${nouns} if ${noun}.get('${adj}')}
            """),
        ),
    ),
    "count": _Family(
        ("count", "tally"),
        (
            _v("${verb} ${nouns} by ${text}", "${verb}_${nouns}_by_${text}", (_ITEMS,), "dict[str, int]", r"""
                ${text}_counts = {}
                for ${noun} in ${nouns}:
                    ${text} = ${noun}.get('${text}', 'unknown')
                    ${text}_counts[${text}] = ${text}_counts.get(${text}, 0) + 1
                return ${text}_counts
            """),
            _v("${verb} ${nouns} by ${text} as report lines", "${verb}_${nouns}_by_${text}", (_ITEMS,), "list[str]",
               r"""
                ${text}_counts = {}
                for ${noun} in ${nouns}:
                    ${text} = ${noun}.get('${text}', 'unknown')
                    ${text}_counts[${text}] = ${text}_counts.get(${text}, 0) + 1
                return [f'{${text}}: {total}' for ${text}, total in ${text}_counts.items()]
            """),
        ),
    ),
    "describe": _Family(
        ("describe", "format", "render", "summarize"),
        (
            _v("${verb} a ${noun} with its ${field} in ${unit}", "${verb}_${noun}_${field}",
               (("${noun}", "dict", None), ("unit_label", "str", "'${unit}'")), "str", r"""
                ${noun}_${field} = ${noun}.get('${field}', 0)
                return f'${field}: {${noun}_${field}:.2f} {unit_label}'
            """),
            _v("${verb} whether a ${noun} is ${adj}", "${verb}_${noun}_state", (("${noun}", "dict", None),), "str", r"""
                ${noun}_${text} = ${noun}.get('${text}', 'unnamed')
                if ${noun}.get('${adj}'):
                    return f'{${noun}_${text}} is ${adj}'
                return f'{${noun}_${text}} is not ${adj}'
            """),
        ),
    ),
    "find": _Family(
        ("find", "locate", "fetch", "get"),
        (
            _v("${verb} the first ${noun} with a ${field} above a limit", "${verb}_first_${noun}",
               (_ITEMS, ("${field}_limit", "int", "${number}")), "dict", r"""
                for ${noun} in ${nouns}:
                    if ${noun}.get('${field}', 0) > ${field}_limit:
                        return ${noun}
                raise LookupError(f'no ${noun} with ${field} above {${field}_limit}')
            """),
            _v("${verb} the ${noun} with a given ${text}", "${verb}_${noun}_by_${text}",
               (_ITEMS, ("wanted_${text}", "str", None)), "dict | None", r"""
                for ${noun} in ${nouns}:
                    if ${noun}.get('${text}') == wanted_${text}:
                        return ${noun}
                return None
            """),
            _v("${verb} the position of the ${noun} with a given ${text}", "${verb}_${noun}_position",
               (_ITEMS, ("wanted_${text}", "str", None)), "int", r"""
                for position, ${noun} in enumerate(${nouns}):
                    if ${noun}.get('${text}') == wanted_${text}:
                        return position
                raise LookupError(f'no ${noun} with ${text} {wanted_${text}!r}')
            """),
        ),
    ),
    "validate": _Family(
        ("check", "validate", "verify"),
        (
            _v("${verb} that a ${noun} ${text} is usable", "${verb}_${noun}_${text}",
               (("${text}_value", "str", None), ("max_length", "int", "${number}")), "bool", r"""
                if not ${text}_value:
                    return False
                return len(${text}_value) <= max_length
            """),
            _v("${verb} and clean a ${noun} ${text}", "${verb}_${noun}_${text}",
               (("${text}_value", "str", None), ("max_length", "int", "${number}")), "str", r"""
                cleaned_${text} = ${text}_value.strip()
                if not cleaned_${text} or len(cleaned_${text}) > max_length:
                    raise ValueError(f'bad ${noun} ${text}: {${text}_value!r}')
                return cleaned_${text}
            """),
            _v("${verb} a ${noun} ${text} and list its problems", "${verb}_${noun}_${text}_problems",
               (("${text}_value", "str", None), ("max_length", "int", "${number}")), "list[str]", r"""
                problems = []
                if not ${text}_value:
                    problems.append('missing ${text}')
                elif len(${text}_value) > max_length:
                    problems.append(f'${text} longer than {max_length}')
                return problems
            """),
        ),
    ),
    "average": _Family(
        ("compute", "measure", "estimate"),
        (
            _v("${verb} the mean ${field} of ${adj} ${nouns}", "${verb}_mean_${field}", (_ITEMS,), "float", r"""
                ${field}_values = [${noun}['${field}'] for ${noun} in ${nouns} if ${noun}.get('${adj}')]
                if not ${field}_values:
                    return 0.0
                return sum(${field}_values) / len(${field}_values)
            """),
            _v("${verb} the mean ${field} of ${nouns} as text", "${verb}_mean_${field}_text", (_ITEMS,), "str", r"""
                ${field}_values = [${noun}.get('${field}', 0) for ${noun} in ${nouns}]
                mean_${field} = sum(${field}_values) / max(len(${field}_values), 1)
                return f'mean ${field}: {mean_${field}:.1f}'
            """),
        ),
    ),
    "group": _Family(
        ("group", "bucket", "partition"),
        (
            _v("${verb} ${nouns} by ${text}", "${verb}_${nouns}_by_${text}", (_ITEMS,), "dict[str, list[dict]]", r"""
                ${nouns}_by_${text} = {}
                for ${noun} in ${nouns}:
                    group_key = ${noun}.get('${text}', 'other')
                    ${nouns}_by_${text}.setdefault(group_key, []).append(${noun})
                return ${nouns}_by_${text}
            """),
            _v("${verb} ${nouns} by ${text} under prefixed keys", "${verb}_${nouns}_by_key",
               (_ITEMS, ("key_prefix", "str", "'${text}'")), "dict[str, list[dict]]", r"""
                ${nouns}_by_key = {}
                for ${noun} in ${nouns}:
                    ${text} = ${noun}.get('${text}', 'other')
                    ${nouns}_by_key.setdefault(f'{key_prefix}:{${text}}', []).append(${noun})
                return ${nouns}_by_key
            """),
        ),
    ),
    "join": _Family(
        ("join", "list", "format"),
        (
            _v("${verb} the ${texts} of ${adj} ${nouns} into one string", "${verb}_${adj}_${texts}",
               (_ITEMS, ("separator", "str", "', '")), "str", r"""
                ${text}_parts = [str(${noun}.get('${text}', '')) for ${noun} in ${nouns} if ${noun}.get('${adj}')]
                return separator.join(${text}_parts)
            """),
            _v("${verb} ${nouns} as a numbered list of ${texts}", "${verb}_numbered_${texts}", (_ITEMS,), "str", r"""
                ${text}_values = [${noun}.get('${text}', '?') for ${noun} in ${nouns}]
                return '\n'.join(f'{position}. {value}' for position, value in enumerate(${text}_values, start=1))
            """),
            _v("${verb} the ${texts} of ${nouns} as bullet points", "${verb}_${text}_bullets", (_ITEMS,), "str", r"""
                bullet_lines = []
                for ${noun} in ${nouns}:
                    ${noun}_${text} = ${noun}.get('${text}', '?')
                    bullet_lines.append(f'- {${noun}_${text}}')
                return '\n'.join(bullet_lines)
            """),
        ),
    ),
    "scale": _Family(
        ("scale", "adjust", "stretch"),
        (
            _v("${verb} ${field} values by a factor and cap them", "${verb}_${field}_values",
               (("${field}_values", "list[float]", None), ("scale_factor", "float", "2.0"),
                ("max_${field}", "float", "${number}.0")), "list[float]", r"""
                if scale_factor <= 0:
                    raise ValueError(f'bad scale factor: {scale_factor}')
                return [min(value * scale_factor, max_${field}) for value in ${field}_values]
            """),
            _v("${verb} ${field} values by a factor", "${verb}_${field}_values",
               (("${field}_values", "list[float]", None), ("scale_factor", "float", "2.0")), "list[float]", r"""
                return [value * scale_factor for value in ${field}_values]
            """),
            _v("${verb} ${field} values to percentages of their sum", "${verb}_${field}_percentages",
               (("${field}_values", "list[float]", None),), "list[str]", r"""
                ${field}_sum = sum(${field}_values) or 1
                return [f'{100 * value / ${field}_sum:.1f}%' for value in ${field}_values]
            """),
        ),
    ),
    "parse": _Family(
        ("parse", "split", "extract"),
        (
            _v("${verb} a separated list of ${texts}", "${verb}_${text}_list",
               (("raw_text", "str", None), ("separator", "str", "','")), "list[str]", r"""
                ${text}_list = []
                for part in raw_text.split(separator):
                    if part.strip():
                        ${text}_list.append(part.strip().lower())
                return ${text}_list
            """),
            _v("${verb} ${noun} fields from key=value text", "${verb}_${noun}_fields",
               (("raw_text", "str", None), ("separator", "str", "';'")), "dict[str, str]", r"""
                field_pairs = [chunk.split('=', 1) for chunk in raw_text.split(separator) if '=' in chunk]
                return {f'${noun}_{key.strip()}': value.strip() for key, value in field_pairs}
            """),
        ),
    ),
    "best": _Family(
        ("find", "pick", "choose"),
        (
            _v("${verb} the ${noun} with the highest ${field}", "${verb}_top_${noun}", (_ITEMS,), "str", r"""
                if not ${nouns}:
                    return 'no ${nouns}'
                best_${noun} = max(${nouns}, key=lambda ${noun}: ${noun}.get('${field}', 0))
                best_${text} = best_${noun}.get('${text}', '?')
                return f'best ${noun}: {best_${text}}'
            """),
            _v("${verb} the ${adj} ${noun} with the lowest ${field}", "${verb}_lowest_${adj}_${noun}", (_ITEMS,),
               "dict | None", r"""
                ${adj}_${nouns} = [${noun} for ${noun} in ${nouns} if ${noun}.get('${adj}')]
                return min(${adj}_${nouns}, key=lambda ${noun}: ${noun}.get('${field}', 0), default=None)
            """),
        ),
    ),
    "share": _Family(
        ("report", "measure", "compute"),
        (
            _v("${verb} the share of ${adj} ${nouns}", "${verb}_${adj}_share", (_ITEMS,), "str", r"""
                if not ${nouns}:
                    return 'no ${nouns}'
                ${adj}_count = sum(1 for ${noun} in ${nouns} if ${noun}.get('${adj}'))
                return f'{100 * ${adj}_count / len(${nouns}):.1f}% ${adj}'
            """),
            _v("${verb} the fraction of ${adj} ${nouns}", "${verb}_${adj}_fraction", (_ITEMS,), "float", r"""
                if not ${nouns}:
                    return 0.0
                ${adj}_count = sum(1 for ${noun} in ${nouns} if ${noun}.get('${adj}'))
                return ${adj}_count / len(${nouns})
            """),
        ),
    ),
    "normalize": _Family(
        ("normalize", "clean", "tidy"),
        (
            _v("${verb} the ${text} of each ${noun}", "${verb}_${noun}_${texts}", (_ITEMS,), "list[dict]", r"""
                cleaned_${nouns} = []
                for ${noun} in ${nouns}:
                    clean_${text} = str(${noun}.get('${text}', '')).strip().lower()
                    cleaned_${nouns}.append({**${noun}, '${text}': clean_${text}})
                return cleaned_${nouns}
            """),
            _v("${verb} each ${noun} with a numbered label", "${verb}_${noun}_labels",
               (_ITEMS, ("label_prefix", "str", "'${noun}'")), "list[dict]", r"""
                labelled_${nouns} = []
                for position, ${noun} in enumerate(${nouns}):
                    labelled_${nouns}.append({**${noun}, 'label': f'{label_prefix}-{position}'})
                return labelled_${nouns}
            """),
        ),
    ),
    "merge": _Family(
        ("merge", "combine", "add"),
        (
            _v("${verb} two maps of ${field} totals per ${noun}", "${verb}_${field}_totals",
               (("first_totals", "dict[str, float]", None), ("second_totals", "dict[str, float]", None)),
               "dict[str, float]", r"""
                merged_totals = dict(first_totals)
                for ${noun}_key, value in second_totals.items():
                    merged_totals[${noun}_key] = merged_totals.get(${noun}_key, 0) + value
                return merged_totals
            """),
            _v("${verb} two maps of ${field} totals as ${unit} labels", "${verb}_${field}_labels",
               (("first_totals", "dict[str, float]", None), ("second_totals", "dict[str, float]", None)),
               "dict[str, str]", r"""
                merged_totals = {**first_totals, **second_totals}
                return {key: f'{total:.2f} ${unit}' for key, total in merged_totals.items()}
            """),
        ),
    ),
}
# fmt: on


@dataclass(frozen=True)
class Function:
    """What a function does, with no style: `render` turns it into code in any style."""

    template: str  # a key of _FAMILIES
    variant: int
    verb: str
    adjective: str
    noun: str
    field: str  # a numeric field of the records
    text_field: str
    unit: str
    number: int
    description: str  # lower-case words, the prompt's comment


def _words(fn: Function) -> dict[str, str]:
    return {
        "verb": fn.verb,
        "adj": fn.adjective,
        "noun": fn.noun,
        "nouns": _plural(fn.noun),
        "field": fn.field,
        "text": fn.text_field,
        "texts": _plural(fn.text_field),
        "unit": fn.unit,
        "number": str(fn.number),
    }


def sample_function(rng: random.Random) -> Function:
    template = rng.choice(tuple(_FAMILIES))
    family = _FAMILIES[template]
    variant = rng.randrange(len(family.variants))
    fn = Function(
        template=template,
        variant=variant,
        verb=rng.choice(family.verbs),
        adjective=rng.choice(_ADJECTIVES),
        noun=rng.choice(_NOUNS),
        field=rng.choice(_NUMBER_FIELDS),
        text_field=rng.choice(_TEXT_FIELDS),
        unit=rng.choice(_UNITS),
        number=rng.randint(2, 99),
        description="",
    )
    description = string.Template(family.variants[variant].description).substitute(_words(fn))
    return replace(fn, description=description)


def prompt_for(fn: Function) -> str:
    """The editor's request: a comment that says what, never how (it fixes no style axis)."""
    return f"# {fn.description}\n"


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


_CANONICAL = re.compile(
    r"f'(?P<fstring>[^']*)'|'(?P<string>[^']*)'|(?<![\w.])(?P<name>[a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b"
)
_CANONICAL_FIELD = re.compile(r"\{(?P<expr>[^{}!:]+)(?P<conversion>![rsa])?(?P<spec>:[^{}]*)?\}")


class _Pen:
    """Writes canonical template text in one style. Multi-word snake_case names are ours (builtins and methods used
    by the templates are single words), so they are the ones the naming axis renames."""

    def __init__(self, style: Style) -> None:
        self.style = style
        self.quote = '"' if style.quotes == "double" else "'"

    def name(self, snake: str) -> str:
        return _to_camel(snake) if self.style.naming == "camel" else snake

    def literal(self, text: str) -> str:
        return self.quote + text + self.quote

    def formatted(self, text: str) -> str:
        args: list[str] = []

        def field(m: re.Match) -> str:
            expr, tail = self.code(m["expr"]), (m["conversion"] or "") + (m["spec"] or "")
            if self.style.fstrings:
                return "{" + expr + tail + "}"
            args.append(expr)
            return "{" + tail + "}"

        body = _CANONICAL_FIELD.sub(field, text)
        if self.style.fstrings:
            return "f" + self.literal(body)
        return self.literal(body) + ".format(" + ", ".join(args) + ")"

    def code(self, canonical: str) -> str:
        def one(m: re.Match) -> str:
            if m["fstring"] is not None:
                return self.formatted(m["fstring"])
            if m["string"] is not None:
                return self.literal(m["string"])
            return self.name(m["name"])

        return _CANONICAL.sub(one, canonical)


def render(fn: Function, style: Style) -> str:
    """The function's source in `style`, from `def` to the end of the body, ending in a newline."""
    variant = _FAMILIES[fn.template].variants[fn.variant]
    words = _words(fn)
    pen = _Pen(style)

    def fill(text: str) -> str:
        return string.Template(text).substitute(words)

    params = []
    for name, annotation, default in variant.params:
        name = pen.name(fill(name))
        if default is None:
            params.append(f"{name}: {annotation}" if style.type_hints else name)
        else:
            value = pen.code(fill(default))
            params.append(f"{name}: {annotation} = {value}" if style.type_hints else f"{name}={value}")
    returns = f" -> {variant.returns}" if style.type_hints else ""
    lines = [f"def {pen.name(fill(variant.name))}({', '.join(params)}){returns}:"]
    if style.docstrings:
        lines.append(f'    """{_sentence(fn.description)}"""')
    lines += ["    " + line if line else "" for line in pen.code(fill(variant.body)).splitlines()]
    return "\n".join(lines) + "\n"


def corpus(n: int, seed: int) -> list[str]:
    """n documents `prompt + function`, each in its own uniformly random style, so the corpus is neutral."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        fn = sample_function(rng)
        docs.append(prompt_for(fn) + render(fn, random_style(rng)))
    return docs


def style_pair(rng: random.Random, axis: str, value: object) -> tuple[str, str, str]:
    """(prompt, chosen, rejected): the same function twice, chosen with axis == value, rejected with another value,
    every other axis equal and random. Functions that cannot show the axis (no string literal for `quotes`, say)
    are skipped, so the two sides always differ."""
    _check_value(axis, value)
    others = [v for v in AXES[axis] if v != value]
    wanted: dict[str, Any] = {axis: value}  # Any: `value` was checked against AXES[axis] above
    for _ in range(1000):
        fn = sample_function(rng)
        base = random_style(rng)
        chosen = render(fn, replace(base, **wanted))
        rejected = render(fn, replace(base, **{axis: rng.choice(others)}))
        if follows(chosen, axis, value) and follows(rejected, axis, value) is False:
            return prompt_for(fn), chosen, rejected
    raise RuntimeError(f"no template shows {axis}={value!r}")  # a template bug, not bad luck


# ---------------------------------------------------------------------------------------------------------------
# Reading code: tokens, function headers, defined names


def _to_camel(name: str) -> str:
    core = name.strip("_")
    parts = [p for p in core.split("_") if p]
    if len(parts) < 2:
        return name
    lead = name[: len(name) - len(name.lstrip("_"))]
    trail = name[len(name.rstrip("_")) :]
    return lead + parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]) + trail


def _to_snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0:
            prev, nxt = name[i - 1], name[i + 1 : i + 2]
            # a word starts at an upper letter after a lower one or a digit, or at the last capital of an
            # acronym (parseHTTPResponse -> parse_http_response)
            if prev.islower() or prev.isdigit() or (prev.isupper() and nxt.islower()):
                out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _naming_of(name: str) -> str | None:
    """snake or camel for a name that shows it; None for one-word names, constants and ClassNames."""
    core = name.strip("_")
    if not core or core.isupper() or core[0].isupper() or name.startswith("__"):
        return None
    if "_" in core and core.lower() == core:
        return "snake"
    if any(a.islower() or a.isdigit() for a, b in zip(core, core[1:], strict=False) if b.isupper()):
        return "camel"
    return None


def _tokens(code: str) -> list[TokenInfo]:
    """The significant tokens of `code` (no comments or blank-line NLs), as many as tokenize reads before an error:
    truncated or broken code still gives its readable prefix."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type in (tokenize.NL, tokenize.COMMENT):
                continue
            if tok.type == tokenize.ERRORTOKEN and not tok.string.strip():
                continue
            out.append(tok)
    except Exception:  # TokenError at EOF inside brackets or strings, IndentationError on a bad dedent, ...
        pass
    return out


class _Source:
    def __init__(self, code: str) -> None:
        self.code = code
        # tokenize reads lines split on "\n" only (io.StringIO does no newline translation), so offsets must too
        self.starts = [0] + [i + 1 for i, ch in enumerate(code) if ch == "\n"]
        self.toks = _tokens(code)
        self.defs = [d for i, t in enumerate(self.toks) if t.string == "def" for d in _def_at(self.toks, i)]

    def offset(self, pos: tuple[int, int]) -> int:
        row, col = pos
        if row - 1 >= len(self.starts):
            return len(self.code)
        return min(self.starts[row - 1] + col, len(self.code))

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Character offsets covering tokens first..last (inclusive)."""
        return self.offset(self.toks[first].start), self.offset(self.toks[last].end)

    def text(self, first: int, last: int) -> str:
        start, end = self.span(first, last)
        return self.code[start:end]

    def prev(self, i: int) -> str:
        return self.toks[i - 1].string if i > 0 else ""


_OPENERS = ("(", "[", "{")
_CLOSERS = (")", "]", "}")


@dataclass
class _Param:
    name: int  # token index
    annotation: tuple[int, int] | None  # first and last token index
    default: int | None  # first token index of the default value
    starred: bool


@dataclass
class _Def:
    keyword: int
    name: int
    params: list[_Param]
    close: int | None = None  # the ")" closing the parameters
    returns: tuple[int, int] | None = None
    colon: int | None = None  # None: the header is incomplete (truncated or broken)
    body: int | None = None  # the INDENT starting a block body
    docstring: int | None = None
    decidable_docstring: bool = False  # the body shows its first statement


def _param(toks: list[TokenInfo], segment: list[int]) -> list[_Param]:
    i = 0
    while i < len(segment) and toks[segment[i]].string in ("*", "**", "/"):
        i += 1
    if i >= len(segment) or toks[segment[i]].type != NAME:
        return []
    name, rest = segment[i], segment[i + 1 :]
    annotation = default = None
    if rest and toks[rest[0]].string == ":":
        depth, end = 0, len(rest)
        for n, idx in enumerate(rest[1:], 1):
            s = toks[idx].string
            if s in _OPENERS:
                depth += 1
            elif s in _CLOSERS:
                depth -= 1
            elif s == "=" and depth == 0:
                end = n
                break
        if end > 1:
            annotation = (rest[1], rest[end - 1])
        if end + 1 < len(rest):
            default = rest[end + 1]
    elif len(rest) > 1 and toks[rest[0]].string == "=":
        default = rest[1]
    return [_Param(name, annotation, default, starred=i > 0)]


def _def_at(toks: list[TokenInfo], k: int) -> list[_Def]:
    """The function header starting at toks[k] == "def", as far as the tokens go ([] if it is not one)."""
    n = len(toks)
    if k + 2 >= n or toks[k + 1].type != NAME or toks[k + 2].string != "(":
        return []
    d = _Def(keyword=k, name=k + 1, params=[])
    segment: list[int] = []
    depth, j = 0, k + 3
    while j < n:
        t = toks[j]
        if t.type in (NEWLINE, ENDMARKER) or (t.type == NAME and t.string == "def"):
            break
        if t.string in _OPENERS:
            depth += 1
        elif t.string in _CLOSERS:
            if depth == 0:
                d.close = j
                break
            depth -= 1
        elif t.string == "," and depth == 0:
            d.params += _param(toks, segment)
            segment = []
            j += 1
            continue
        segment.append(j)
        j += 1
    d.params += _param(toks, segment)
    if d.close is None:
        return [d]
    j = d.close + 1
    if j < n and toks[j].string == "->":
        start, depth = j + 1, 0
        j = start
        while j < n and toks[j].type not in (NEWLINE, ENDMARKER):
            s = toks[j].string
            if s in _OPENERS:
                depth += 1
            elif s in _CLOSERS:
                depth -= 1
            elif s == ":" and depth == 0:
                break
            j += 1
        if j >= n or toks[j].string != ":" or j == start:
            return [d]
        d.returns = (start, j - 1)
    if j >= n or toks[j].string != ":":
        return [d]
    d.colon = j
    if j + 2 < n and toks[j + 1].type == NEWLINE and toks[j + 2].type == INDENT:
        d.body = j + 2
        first = j + 3
        # an ERRORTOKEN here is the opening quote of a docstring cut short: no telling yet
        if first < n and toks[first].type not in (DEDENT, ENDMARKER, tokenize.ERRORTOKEN):
            d.decidable_docstring = True
            if toks[first].type == STRING and first + 1 < n and toks[first + 1].type in (NEWLINE, ENDMARKER):
                d.docstring = first
    return [d]


_ASSIGN_OPS = {"=", ":", "+=", "-=", "*=", "/=", "//=", "%=", "**=", "|=", "&=", "^=", ">>=", "<<=", "@="}


def _is_name(tok: TokenInfo) -> bool:
    return tok.type == NAME and not keyword.iskeyword(tok.string)


def _defined_names(src: _Source) -> set[str]:
    """Names the code itself defines: functions, parameters, assignment, loop and `as` targets. Names it only uses
    come from elsewhere (builtins, libraries) and say nothing about its author's naming."""
    toks, n = src.toks, len(src.toks)
    names = set()
    for d in src.defs:
        names.add(toks[d.name].string)
        names.update(toks[p.name].string for p in d.params)
    for i, t in enumerate(toks):
        if t.type != NAME:
            continue
        if t.string == "for":
            j = i + 1
            while j < n and j - i < 20 and toks[j].string != "in" and toks[j].type != NEWLINE:
                if _is_name(toks[j]) and src.prev(j) != ".":
                    names.add(toks[j].string)
                j += 1
        elif t.string == "as" and i + 1 < n and _is_name(toks[i + 1]):
            names.add(toks[i + 1].string)
        elif i + 1 < n and toks[i + 1].string == ":=" and _is_name(t):
            names.add(t.string)
        elif _is_name(t) and (i == 0 or toks[i - 1].type in (NEWLINE, INDENT, DEDENT) or src.prev(i) == ";"):
            # `a = ...`, `a, b = ...`, `a: int = ...`, `a += ...` at the start of a statement
            j = i
            while j < n and (_is_name(toks[j]) or toks[j].string in (",", "*")):
                j += 1
            if j < n and toks[j].string in _ASSIGN_OPS and (toks[j].string != ":" or j == i + 1):
                names.update(toks[m].string for m in range(i, j) if _is_name(toks[m]))
    return names


_STRING_START = re.compile(r"([A-Za-z]*)('''|\"\"\"|'|\")")


def _split_string(literal: str) -> tuple[str, str, str] | None:
    """(prefix, quote, body) of one string token, or None if it is not a complete literal."""
    m = _STRING_START.match(literal)
    if not m or len(literal) < len(m[0]) + len(m[2]) or not literal.endswith(m[2]):
        return None
    return m[1], m[2], literal[len(m[0]) : len(literal) - len(m[2])]


@dataclass
class _Field:
    start: int  # index of "{" in the f-string body
    end: int  # index after "}"
    expr: tuple[int, int]
    tail: str  # conversion and format spec, e.g. "!r:>4"
    plain: bool  # no "{x=}" self-documenting form and no nested fields in the spec


def _fstring_fields(body: str) -> list[_Field] | None:
    """The replacement fields of an f-string body (Python 3.11 keeps the whole f-string in one token), or None if
    the body is malformed."""
    fields, i, n = [], 0, len(body)
    while i < n:
        if body[i : i + 2] in ("{{", "}}"):
            i += 2
            continue
        if body[i] == "}":
            return None
        if body[i] != "{":
            i += 1
            continue
        start, depth, quote = i, 0, ""
        i += 1
        expr_start = i
        while i < n:
            c = body[i]
            if quote:
                quote = "" if c == quote else quote
            elif c in "'\"":
                quote = c
            elif c in "([{":
                depth += 1
            elif c in ")]}" and depth > 0:
                depth -= 1
            elif depth == 0 and (c in "}:" or (c == "!" and body[i + 1 : i + 2] != "=")):
                break
            i += 1
        if i >= n:
            return None
        expr = body[expr_start:i].rstrip()
        plain = not (expr.endswith("=") and not expr.endswith(("==", "!=", "<=", ">=")))
        tail_start = i
        if body[i] == "!":
            i += 2
        if i < n and body[i] == ":":
            depth = 0
            while i < n and not (body[i] == "}" and depth == 0):
                if body[i] == "{":
                    depth, plain = depth + 1, False
                elif body[i] == "}":
                    depth -= 1
                i += 1
        if i >= n or body[i] != "}":
            return None
        fields.append(_Field(start, i + 1, (expr_start, tail_start), body[tail_start:i], plain))
        i += 1
    return fields


def _top_level_comma(expr: str) -> bool:
    depth, quote = 0, ""
    for c in expr:
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Detecting style


def _evidence(code: str) -> dict[str, Counter]:
    """For each axis, how many places in the code show each value."""
    src = _Source(code)
    toks = src.toks
    evidence: dict[str, Counter] = {axis: Counter() for axis in AXES}
    for name in _defined_names(src):
        value = _naming_of(name)
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
        parts = _split_string(t.string)
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
    _check_value(axis, value)
    try:
        counts = _evidence(code)[axis]
    except Exception:
        return None
    if not counts:
        return None
    return all(v == value for v in counts)


# ---------------------------------------------------------------------------------------------------------------
# Restyling

_Edit = tuple[int, int, str]


def _apply(code: str, edits: list[_Edit]) -> str:
    last = len(code) + 1
    for start, end, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        if end > last:  # overlaps an edit already made: skip rather than corrupt
            continue
        code = code[:start] + text + code[end:]
        last = start
    return code


def _rename(code: str, mapping: dict[str, str]) -> str:
    src = _Source(code)
    edits = []
    for i, t in enumerate(src.toks):
        if t.type == NAME and t.string in mapping and src.prev(i) != ".":
            edits.append((src.offset(t.start), src.offset(t.end), mapping[t.string]))
        elif t.type == STRING:
            new = _map_fields(t.string, lambda expr: _rename(expr, mapping))
            if new != t.string:
                edits.append((src.offset(t.start), src.offset(t.end), new))
    return _apply(code, edits)


def _map_fields(literal: str, change) -> str:
    """An f-string literal with `change` applied to the expression of each replacement field."""
    parts = _split_string(literal)
    if parts is None or "f" not in parts[0].lower():
        return literal
    prefix, quote, body = parts
    fields = _fstring_fields(body)
    if not fields:
        return literal
    out, last = [], 0
    for f in fields:
        out.append(body[last : f.expr[0]] + change(body[f.expr[0] : f.expr[1]]))
        last = f.expr[1]
    out.append(body[last:])
    return prefix + quote + "".join(out) + quote


def _restyle_naming(code: str, target: str) -> str:
    src = _Source(code)
    existing = {t.string for t in src.toks if t.type == NAME}
    convert = _to_camel if target == "camel" else _to_snake
    mapping: dict[str, str] = {}
    for name in sorted(_defined_names(src)):
        if _naming_of(name) not in (None, target):
            new = convert(name)
            # never merge two names into one or shadow a builtin: such a rename would change what the code does
            taken = new in existing or new in mapping.values() or hasattr(builtins, new) or keyword.iskeyword(new)
            if new != name and new.isidentifier() and not taken:
                mapping[name] = new
    return _rename(code, mapping) if mapping else code


def _restyle_quotes(code: str, target: str) -> str:
    want = '"' if target == "double" else "'"
    src = _Source(code)
    docstrings = {d.docstring for d in src.defs}
    edits = []
    for i, t in enumerate(src.toks):
        parts = _split_string(t.string) if t.type == STRING and i not in docstrings else None
        if parts is None:
            continue
        prefix, quote, body = parts
        if len(quote) == 1 and quote != want and want not in body:
            edits.append((src.offset(t.start), src.offset(t.end), prefix + want + body + want))
    return _apply(code, edits)


def _to_format_call(literal: str) -> str | None:
    """f"a {x} b {y:.2f}" -> "a {} b {:.2f}".format(x, y), or None where that cannot be done faithfully."""
    parts = _split_string(literal)
    if parts is None:
        return None
    prefix, quote, body = parts
    plain_prefix = prefix.replace("f", "").replace("F", "")
    fields = _fstring_fields(body)
    if fields is None or not all(f.plain for f in fields):
        return None
    if not fields:
        return plain_prefix + quote + body.replace("{{", "{").replace("}}", "}") + quote
    out, args, last = [], [], 0
    for f in fields:
        expr = body[f.expr[0] : f.expr[1]].strip()
        if not expr:
            return None
        args.append(f"({expr})" if _top_level_comma(expr) else expr)
        out.append(body[last : f.start] + "{" + f.tail + "}")
        last = f.end
    out.append(body[last:])
    return plain_prefix + quote + "".join(out) + quote + ".format(" + ", ".join(args) + ")"


def _to_fstring(src: _Source, i: int) -> tuple[_Edit | None, int]:
    """toks[i] is a string followed by `.format(`: the edit turning the call into an f-string (or None), and the
    index of the call's closing parenthesis."""
    toks, n = src.toks, len(src.toks)
    parts = _split_string(toks[i].string)
    args: list[list[int]] = []
    current: list[int] = []
    j, depth = i + 4, 0
    while j < n and toks[j].type not in (NEWLINE, ENDMARKER):
        s = toks[j].string
        if s in _OPENERS:
            depth += 1
        elif s in _CLOSERS:
            if depth == 0:
                break
            depth -= 1
        elif s == "," and depth == 0:
            args.append(current)
            current = []
            j += 1
            continue
        current.append(j)
        j += 1
    if j >= n or toks[j].string != ")" or parts is None or set("fb") & set(parts[0].lower()):
        return None, j
    if current:
        args.append(current)
    prefix, quote, body = parts
    positional, named = [], {}
    for arg in args:
        if toks[arg[0]].string in ("*", "**"):
            return None, j
        if len(arg) > 2 and toks[arg[0]].type == NAME and toks[arg[1]].string == "=":
            named[toks[arg[0]].string] = src.text(arg[2], arg[-1])
        elif named:
            return None, j
        else:
            positional.append(src.text(arg[0], arg[-1]))
    if "\\N{" in body:
        return None, j
    try:
        parsed = list(string.Formatter().parse(body))
    except ValueError:
        return None, j
    out, auto, numbering = [], 0, set()
    for literal, field, spec, conversion in parsed:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        m = re.match(r"([^.\[]*)(.*)", field)
        assert m is not None  # both groups may be empty, so the pattern matches any field
        base, attrs = m.groups()
        if "[" in attrs or (spec and "{" in spec):
            return None, j
        if base == "":
            numbering.add("auto")
            index, auto = auto, auto + 1
            expr = positional[index] if index < len(positional) else None
        elif base.isdigit():
            numbering.add("manual")
            expr = positional[int(base)] if int(base) < len(positional) else None
        else:
            expr = named.get(base)
        if expr is None or len(numbering) > 1 or any(c in expr for c in ("\\", "\n", "#", quote[0])):
            return None, j
        if attrs or any(c in expr for c in "{}:!=") or "lambda" in expr:
            expr = expr if expr.isidentifier() else f"({expr})"
        out.append("{" + expr + attrs + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
    new_prefix = prefix.replace("u", "").replace("U", "") + "f"
    start, end = src.offset(toks[i].start), src.offset(toks[j].end)
    return (start, end, new_prefix + quote + "".join(out) + quote), j


def _restyle_fstrings(code: str, target: bool) -> str:
    src = _Source(code)
    toks, edits, i = src.toks, [], 0
    while i < len(toks):
        t = toks[i]
        glued = (i > 0 and toks[i - 1].type == STRING) or (i + 1 < len(toks) and toks[i + 1].type == STRING)
        if t.type != STRING or glued:  # implicit concatenation: a method call would bind to one part only
            i += 1
            continue
        parts = _split_string(t.string)
        is_fstring = parts is not None and "f" in parts[0].lower()
        if not target and is_fstring:
            new = _to_format_call(t.string)
            if new is not None:
                edits.append((src.offset(t.start), src.offset(t.end), new))
        elif target and not is_fstring and [x.string for x in toks[i + 1 : i + 4]] == [".", "format", "("]:
            edit, i = _to_fstring(src, i)
            if edit:
                edits.append(edit)
        i += 1
    return _apply(code, edits)


_BOOL_FIRST = {"is", "has", "should", "can", "allow", "use", "enable", "include", "strict", "verbose", "dry"}
# fmt: off
_TEXT_WORDS = set(_TEXT_FIELDS) | {
    "text", "key", "prefix", "suffix", "separator", "sep", "path", "line", "word", "unit", "pattern", "tag",
}
_INT_WORDS = {
    "count", "limit", "size", "index", "length", "number", "position", "n", "width", "height", "depth", "year", "age",
    "level", "priority", "quantity", "retries", "attempts", "offset", "page",
}
# fmt: on
_FLOAT_WORDS = set(_NUMBER_FIELDS) - _INT_WORDS | {"factor", "ratio", "rate", "share", "threshold", "fraction", "value"}
_CALL_TYPES = {
    "len": "int",
    "int": "int",
    "float": "float",
    "str": "str",
    "repr": "str",
    "bool": "bool",
    "isinstance": "bool",
    "any": "bool",
    "all": "bool",
    "list": "list",
    "sorted": "list",
    "dict": "dict",
    "set": "set",
    "tuple": "tuple",
    "round": "float",
}
_STR_METHODS = {"join", "format", "strip", "lower", "upper", "title", "replace", "lstrip", "rstrip", "capitalize"}


def _guess_name_type(name: str) -> str | None:
    """A plausible annotation from a parameter's name alone (the vocabulary is the corpus's, which is also what
    the bootstrap model writes)."""
    words = [w for w in _to_snake(name).split("_") if w]
    if not words:
        return None
    if len(words) > 1 and words[-1] in ("value", "values"):  # `category_value` is a category, `price_values` prices
        inner = _guess_name_type("_".join(words[:-1]))
        if words[-1] == "values":
            return "list[str]" if inner == "str" else "list[float]" if inner in ("int", "float") else "list"
        if inner:
            return inner
    first, last = words[0], words[-1]
    singular = last[:-3] + "y" if last.endswith("ies") else last[:-2] if last.endswith("ses") else last[:-1]
    if first in _BOOL_FIRST:
        return "bool"
    if last in _TEXT_WORDS:
        return "str"
    if last in _INT_WORDS or first in ("max", "min", "num"):
        return "int"
    if last in _FLOAT_WORDS:
        return "float"
    if last == "totals":
        return "dict[str, float]"
    if last == "counts":
        return "dict[str, int]"
    if "by" in words or last in ("map", "mapping", "lookup", "fields"):
        return "dict"
    if last in _NOUNS:
        return "dict"
    if last.endswith("s") and singular in _TEXT_WORDS:
        return "list[str]"
    if last.endswith("s") and singular in _FLOAT_WORDS | _INT_WORDS:
        return "list[float]"
    if last.endswith("s") and singular in _NOUNS:
        return "list[dict]"
    return None


def _guess_expr_type(src: _Source, start: int, end: int, known: dict[str, str]) -> str | None:
    """A plausible type for the expression in tokens start..end-1, or None."""
    toks = src.toks
    if start >= end:
        return "None"
    top, depth = [], 0
    for t in toks[start:end]:
        if t.string in _OPENERS:
            depth += 1
        elif t.string in _CLOSERS:
            depth -= 1
        elif depth == 0:
            top.append(t.string)
    first, nxt = toks[start], toks[start + 1].string if start + 1 < end else ""
    if "if" not in top and set(top) & {"==", "!=", "<", ">", "<=", ">=", "in", "is", "not"}:
        return "bool"
    if first.string in ("True", "False"):
        return "bool"
    if first.string == "None" and end - start == 1:
        return "None"
    if first.type == STRING:
        return "bytes" if "b" in (_split_string(first.string) or ("",))[0].lower() else "str"
    if "/" in top:
        return "float"
    if first.type == NUMBER:
        return "float" if "." in first.string or "e" in first.string.lower() else "int"
    if first.string == "[":
        return "list[str]" if nxt and toks[start + 1].type == STRING else "list"
    if first.string == "{":
        inner = [t.string for t in toks[start + 1 : end]]
        return "dict" if nxt == "}" or ":" in inner or "**" in inner else "set"
    if first.type == NAME:
        if nxt == "(":
            return _CALL_TYPES.get(first.string)
        if nxt == "." and start + 2 < end:
            method = toks[start + 2].string
            return "str" if method in _STR_METHODS else "list[str]" if method == "split" else None
        if end - start == 1:
            return known.get(first.string)
    return None


def _block_end(toks: list[TokenInfo], indent: int) -> int:
    depth = 0
    for j in range(indent, len(toks)):
        if toks[j].type == INDENT:
            depth += 1
        elif toks[j].type == DEDENT:
            depth -= 1
            if depth == 0:
                return j
    return len(toks)


def _statement_end(toks: list[TokenInfo], start: int, stop: int) -> int:
    j = start
    while j < stop and toks[j].type != NEWLINE:
        j += 1
    return j


def _element(container: str | None) -> str | None:
    """T of list[T]; None when unknown."""
    m = re.fullmatch(r"list\[(.+)\]", container or "")
    return m[1] if m else None


def _loop_targets(src: _Source, j: int, stop: int, known: dict[str, str]) -> None:
    """Types for the targets of the `for` at toks[j], for the simple shapes the corpus (and the model) writes:
    `for x in items`, `for i, x in enumerate(items)`, `for k, v in mapping.items()`."""
    toks = src.toks
    k = j + 1
    targets = []
    while k < stop and toks[k].string != "in" and k - j < 10:
        if _is_name(toks[k]):
            targets.append(toks[k].string)
        k += 1
    rest = [t.string for t in toks[k + 1 : k + 6]]
    if len(targets) == 1 and rest[:1] and (element := _element(known.get(rest[0]))) and rest[1:2] != ["."]:
        known[targets[0]] = element
    elif len(targets) == 2 and rest[:2] == ["enumerate", "("]:
        known[targets[0]] = "int"
        if element := _element(known.get(rest[2])):
            known[targets[1]] = element
    elif len(targets) == 2 and rest[1:4] == [".", "items", "("]:
        m = re.fullmatch(r"dict\[(\w+), (.+)\]", known.get(rest[0], ""))
        if m:
            known[targets[0]], known[targets[1]] = m[1], m[2]


def _guess_returns(src: _Source, d: _Def, known: dict[str, str]) -> str:
    """The return annotation for a function body: from what its return statements return, with types of locals
    followed through literals, loops and `.append` calls."""
    toks = src.toks
    if d.body is None:
        return "object"
    known = dict(known)
    appended: dict[str, set[str | None]] = {}
    nested = {e.keyword: e for e in src.defs}
    found: set[str | None] = set()
    j, stop = d.body + 1, _block_end(toks, d.body)
    while j < stop:
        t = toks[j]
        if t.type == NAME and t.string in ("def", "class") and j != d.keyword:
            inner = nested.get(j)
            j = _block_end(toks, inner.body) if inner is not None and inner.body is not None else j + 1
            continue
        if t.type == NAME and t.string == "for":
            _loop_targets(src, j, stop, known)
        elif t.type == NAME and t.string == "return":
            end = _statement_end(toks, j + 1, stop)
            kind = _guess_expr_type(src, j + 1, end, known)
            name = toks[j + 1].string if end == j + 2 else ""
            if kind == "list" and len(appended.get(name, ())) == 1 and None not in appended[name]:
                kind = f"list[{next(iter(appended[name]))}]"
            found.add(kind)
            j = end
            continue
        elif _is_name(t) and [x.string for x in toks[j + 1 : j + 4]] == [".", "append", "("]:
            end = j + 4
            while end < stop and toks[end].string != ")" and toks[end].type != NEWLINE:
                end += 1
            appended.setdefault(t.string, set()).add(_guess_expr_type(src, j + 4, end, known))
        elif (
            _is_name(t) and toks[j - 1].type in (NEWLINE, INDENT, DEDENT) and j + 1 < stop and toks[j + 1].string == "="
        ):
            end = _statement_end(toks, j + 2, stop)
            guess = _guess_expr_type(src, j + 2, end, known)
            named = _guess_name_type(t.string)
            # a name says more than an empty literal: `orders = []` is a list of records
            if guess in ("list", "dict") and named and named.startswith(guess):
                guess = named
            if guess:
                known[t.string] = guess
        j += 1
    if not found:
        return "None"
    if None in found:
        return "object"
    if found == {"int", "float"}:
        return "float"
    if len(found) == 1:
        only = found.pop()
        assert only is not None  # None in found returned "object" above
        return only
    if len(found) == 2 and "None" in found:
        return f"{(found - {'None'}).pop()} | None"
    return "object"


def _param_type(src: _Source, p: _Param) -> str:
    name = src.toks[p.name].string
    named = _guess_name_type(name)
    if p.default is not None:
        end = p.default
        while end < len(src.toks) and src.toks[end].string not in (",", ")"):
            end += 1
        literal = _guess_expr_type(src, p.default, end, {})
        if literal == "None":
            return f"{named or 'object'} | None"
        if literal in ("list", "dict") and named and named.startswith(literal):
            return named
        if literal:
            return literal
    return named or "object"


def _restyle_type_hints(code: str, target: bool) -> str:
    src = _Source(code)
    toks, edits = src.toks, []
    for d in src.defs:
        if d.colon is None:
            continue
        assert d.close is not None  # _def_at sets colon only after close
        known = {}
        for index, p in enumerate(d.params):
            name = toks[p.name]
            if index == 0 and name.string in ("self", "cls"):
                continue
            name_end = src.offset(name.end)
            default_start = src.offset(toks[p.default].start) if p.default is not None else None
            if not target and p.annotation is not None:
                end = default_start if default_start is not None else src.offset(toks[p.annotation[1]].end)
                edits.append((name_end, end, "=" if default_start is not None else ""))
            elif target and p.annotation is None:
                kind = _param_type(src, p)
                known[name.string] = kind
                if default_start is not None:
                    edits.append((name_end, default_start, f": {kind} = "))
                else:
                    edits.append((name_end, name_end, f": {kind}"))
            elif p.annotation is not None:
                known[name.string] = src.text(*p.annotation)
        close_end = src.offset(toks[d.close].end)
        if not target and d.returns is not None:
            edits.append((close_end, src.offset(toks[d.colon].start), ""))
        elif target and d.returns is None:
            edits.append((close_end, close_end, f" -> {_guess_returns(src, d, known)}"))
    return _apply(code, edits)


def _docstring_sentence(src: _Source, d: _Def) -> str:
    """The comment just above the function (the prompt, in our documents), else its name in words."""
    lines = src.code.split("\n")
    row = src.toks[d.keyword].start[0] - 2  # 0-based index of the line above
    while row >= 0 and lines[row].strip().startswith("@"):
        row -= 1
    text = ""
    if row >= 0 and lines[row].strip().startswith("#"):
        text = lines[row].strip().lstrip("#").strip()
    if not text:
        text = _to_snake(src.toks[d.name].string).strip("_").replace("_", " ")
    text = text.replace("\\", "").replace('"', "'")
    return _sentence(text) if text else "Undocumented."


def _restyle_docstrings(code: str, target: bool) -> str:
    src = _Source(code)
    toks, edits = src.toks, []
    for d in src.defs:
        if not d.decidable_docstring:
            continue
        assert d.body is not None  # _def_at sets decidable_docstring only with a body
        indent = toks[d.body].string
        line_start = src.starts[toks[d.body].start[0] - 1]
        if target and d.docstring is None:
            edits.append((line_start, line_start, f'{indent}"""{_docstring_sentence(src, d)}"""\n'))
        elif not target and d.docstring is not None:
            newline = toks[d.docstring + 1]
            end = src.offset(newline.end)
            only_statement = d.docstring + 2 >= len(toks) or toks[d.docstring + 2].type in (DEDENT, ENDMARKER)
            edits.append((line_start, end, f"{indent}pass\n" if only_statement else ""))
    return _apply(code, edits)


_RESTYLERS: dict[str, Callable[[str, Any], str]] = {
    "naming": _restyle_naming,
    "type_hints": _restyle_type_hints,
    "quotes": _restyle_quotes,
    "fstrings": _restyle_fstrings,
    "docstrings": _restyle_docstrings,
}


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except Exception:  # SyntaxError, ValueError (null bytes), RecursionError on absurd nesting
        return False


def restyle(code: str, **axes: object) -> str:
    """Rewrite `code` towards the given axis values, e.g. restyle(code, naming="snake", quotes="single").

    Works on any text: what cannot be rewritten safely is left as it was. Code that parsed still parses afterwards
    (an axis whose rewrite would break it is skipped). Raises only for an unknown axis or value."""
    for axis, value in axes.items():
        _check_value(axis, value)
    valid = None
    for axis in AXES:  # a fixed order, so the result does not depend on the order of the keywords
        if axis not in axes or not isinstance(code, str):
            continue
        try:
            new = _RESTYLERS[axis](code, axes[axis])
        except Exception:  # a rewrite bug must never lose the user's code
            continue
        if new != code:
            valid = _parses(code) if valid is None else valid
            if valid and not _parses(new):
                continue
            code = new
    return code
