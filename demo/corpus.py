"""A synthetic Python corpus whose style varies along independent axes (`demo.style.AXES`).

The bootstrap model is pretrained on this corpus, so every document draws every axis uniformly: the base model must
be neutral, or a later preference could not be told from a prior. `style_pair` gives preference pairs that differ in
exactly one axis.
"""

import random
import re
import string
import textwrap
from dataclasses import dataclass, replace
from typing import Any

from demo.style import AXES, Style, check_value, follows, random_style
from demo.tokens import to_camel

# A template is written once in a canonical form: snake_case, 'single' quotes as string markers, f'...' for
# formatted strings, with ${word} holes for the sampled names. The renderer restyles that form; it never parses
# Python, so it stays independent of `restyle`, and the tests can check one against the other.

# fmt: off
NOUNS = (
    "order", "user", "item", "record", "event", "invoice", "ticket", "task", "product", "message", "account",
    "session", "payment", "booking", "review", "comment", "device", "job", "note", "shipment", "request", "report",
    "customer", "post",
)
ADJECTIVES = (
    "active", "valid", "pending", "recent", "open", "paid", "large", "stale", "urgent", "public", "hidden",
    "visible", "archived", "failed", "flagged", "approved", "expired", "shared", "blocked", "verified",
)
NUMBER_FIELDS = (
    "price", "amount", "score", "size", "weight", "duration", "quantity", "cost", "rating", "priority", "age", "level",
)
TEXT_FIELDS = (
    "name", "title", "label", "email", "status", "owner", "city", "category", "region", "author", "topic", "country",
)
# fmt: on
UNITS = ("EUR", "USD", "kg", "km", "points", "minutes", "units", "items")


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
        adjective=rng.choice(ADJECTIVES),
        noun=rng.choice(NOUNS),
        field=rng.choice(NUMBER_FIELDS),
        text_field=rng.choice(TEXT_FIELDS),
        unit=rng.choice(UNITS),
        number=rng.randint(2, 99),
        description="",
    )
    description = string.Template(family.variants[variant].description).substitute(_words(fn))
    return replace(fn, description=description)


def prompt_for(fn: Function) -> str:
    """The editor's request: a comment that says what, never how (it fixes no style axis)."""
    return f"# {fn.description}\n"


def sentence(text: str) -> str:
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
        return to_camel(snake) if self.style.naming == "camel" else snake

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
        lines.append(f'    """{sentence(fn.description)}"""')
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
    check_value(axis, value)
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
