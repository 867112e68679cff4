"""Rewriting code towards a style: `restyle(code, naming="snake", quotes="single")`, a simulated editor's taste.

It takes arbitrary code, model output included (truncated, broken, not Python at all), and never raises on bad input:
the worst case is the code handed back unchanged.
"""

import builtins
import keyword
import re
import string
from collections.abc import Callable
from tokenize import DEDENT, ENDMARKER, INDENT, NAME, NEWLINE, NUMBER, STRING, TokenInfo
from typing import Any

from demo.corpus import NOUNS, NUMBER_FIELDS, TEXT_FIELDS, sentence
from demo.style import AXES, check_value
from demo.tokens import (
    CLOSERS,
    OPENERS,
    Def,
    Param,
    Source,
    defined_names,
    fstring_fields,
    is_name,
    naming_of,
    split_string,
    to_camel,
    to_snake,
    top_level_comma,
)
from feedback.syntax import parses

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
    src = Source(code)
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
    parts = split_string(literal)
    if parts is None or "f" not in parts[0].lower():
        return literal
    prefix, quote, body = parts
    fields = fstring_fields(body)
    if not fields:
        return literal
    out, last = [], 0
    for f in fields:
        out.append(body[last : f.expr[0]] + change(body[f.expr[0] : f.expr[1]]))
        last = f.expr[1]
    out.append(body[last:])
    return prefix + quote + "".join(out) + quote


def _restyle_naming(code: str, target: str) -> str:
    src = Source(code)
    existing = {t.string for t in src.toks if t.type == NAME}
    convert = to_camel if target == "camel" else to_snake
    mapping: dict[str, str] = {}
    for name in sorted(defined_names(src)):
        if naming_of(name) not in (None, target):
            new = convert(name)
            # never merge two names into one or shadow a builtin: such a rename would change what the code does
            taken = new in existing or new in mapping.values() or hasattr(builtins, new) or keyword.iskeyword(new)
            if new != name and new.isidentifier() and not taken:
                mapping[name] = new
    return _rename(code, mapping) if mapping else code


def _restyle_quotes(code: str, target: str) -> str:
    want = '"' if target == "double" else "'"
    src = Source(code)
    docstrings = {d.docstring for d in src.defs}
    edits = []
    for i, t in enumerate(src.toks):
        parts = split_string(t.string) if t.type == STRING and i not in docstrings else None
        if parts is None:
            continue
        prefix, quote, body = parts
        if len(quote) == 1 and quote != want and want not in body:
            edits.append((src.offset(t.start), src.offset(t.end), prefix + want + body + want))
    return _apply(code, edits)


def _to_format_call(literal: str) -> str | None:
    """f"a {x} b {y:.2f}" -> "a {} b {:.2f}".format(x, y), or None where that cannot be done faithfully."""
    parts = split_string(literal)
    if parts is None:
        return None
    prefix, quote, body = parts
    plain_prefix = prefix.replace("f", "").replace("F", "")
    fields = fstring_fields(body)
    if fields is None or not all(f.plain for f in fields):
        return None
    if not fields:
        return plain_prefix + quote + body.replace("{{", "{").replace("}}", "}") + quote
    out, args, last = [], [], 0
    for f in fields:
        expr = body[f.expr[0] : f.expr[1]].strip()
        if not expr:
            return None
        args.append(f"({expr})" if top_level_comma(expr) else expr)
        out.append(body[last : f.start] + "{" + f.tail + "}")
        last = f.end
    out.append(body[last:])
    return plain_prefix + quote + "".join(out) + quote + ".format(" + ", ".join(args) + ")"


def _to_fstring(src: Source, i: int) -> tuple[_Edit | None, int]:
    """toks[i] is a string followed by `.format(`: the edit turning the call into an f-string (or None), and the
    index of the call's closing parenthesis."""
    toks, n = src.toks, len(src.toks)
    parts = split_string(toks[i].string)
    args: list[list[int]] = []
    current: list[int] = []
    j, depth = i + 4, 0
    while j < n and toks[j].type not in (NEWLINE, ENDMARKER):
        s = toks[j].string
        if s in OPENERS:
            depth += 1
        elif s in CLOSERS:
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
    src = Source(code)
    toks, edits, i = src.toks, [], 0
    while i < len(toks):
        t = toks[i]
        glued = (i > 0 and toks[i - 1].type == STRING) or (i + 1 < len(toks) and toks[i + 1].type == STRING)
        if t.type != STRING or glued:  # implicit concatenation: a method call would bind to one part only
            i += 1
            continue
        parts = split_string(t.string)
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
_TEXT_WORDS = set(TEXT_FIELDS) | {
    "text", "key", "prefix", "suffix", "separator", "sep", "path", "line", "word", "unit", "pattern", "tag",
}
_INT_WORDS = {
    "count", "limit", "size", "index", "length", "number", "position", "n", "width", "height", "depth", "year", "age",
    "level", "priority", "quantity", "retries", "attempts", "offset", "page",
}
# fmt: on
_FLOAT_WORDS = set(NUMBER_FIELDS) - _INT_WORDS | {"factor", "ratio", "rate", "share", "threshold", "fraction", "value"}
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
    words = [w for w in to_snake(name).split("_") if w]
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
    if last in NOUNS:
        return "dict"
    if last.endswith("s") and singular in _TEXT_WORDS:
        return "list[str]"
    if last.endswith("s") and singular in _FLOAT_WORDS | _INT_WORDS:
        return "list[float]"
    if last.endswith("s") and singular in NOUNS:
        return "list[dict]"
    return None


def _guess_expr_type(src: Source, start: int, end: int, known: dict[str, str]) -> str | None:
    """A plausible type for the expression in tokens start..end-1, or None."""
    toks = src.toks
    if start >= end:
        return "None"
    top, depth = [], 0
    for t in toks[start:end]:
        if t.string in OPENERS:
            depth += 1
        elif t.string in CLOSERS:
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
        return "bytes" if "b" in (split_string(first.string) or ("",))[0].lower() else "str"
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


def _loop_targets(src: Source, j: int, stop: int, known: dict[str, str]) -> None:
    """Types for the targets of the `for` at toks[j], for the simple shapes the corpus (and the model) writes:
    `for x in items`, `for i, x in enumerate(items)`, `for k, v in mapping.items()`."""
    toks = src.toks
    k = j + 1
    targets = []
    while k < stop and toks[k].string != "in" and k - j < 10:
        if is_name(toks[k]):
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


def _guess_returns(src: Source, d: Def, known: dict[str, str]) -> str:
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
        elif is_name(t) and [x.string for x in toks[j + 1 : j + 4]] == [".", "append", "("]:
            end = j + 4
            while end < stop and toks[end].string != ")" and toks[end].type != NEWLINE:
                end += 1
            appended.setdefault(t.string, set()).add(_guess_expr_type(src, j + 4, end, known))
        elif (
            is_name(t) and toks[j - 1].type in (NEWLINE, INDENT, DEDENT) and j + 1 < stop and toks[j + 1].string == "="
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


def _param_type(src: Source, p: Param) -> str:
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
    src = Source(code)
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


def _docstring_sentence(src: Source, d: Def) -> str:
    """The comment just above the function (the prompt, in our documents), else its name in words."""
    lines = src.code.split("\n")
    row = src.toks[d.keyword].start[0] - 2  # 0-based index of the line above
    while row >= 0 and lines[row].strip().startswith("@"):
        row -= 1
    text = ""
    if row >= 0 and lines[row].strip().startswith("#"):
        text = lines[row].strip().lstrip("#").strip()
    if not text:
        text = to_snake(src.toks[d.name].string).strip("_").replace("_", " ")
    text = text.replace("\\", "").replace('"', "'")
    return sentence(text) if text else "Undocumented."


def _restyle_docstrings(code: str, target: bool) -> str:
    src = Source(code)
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


def restyle(code: str, **axes: object) -> str:
    """Rewrite `code` towards the given axis values, e.g. restyle(code, naming="snake", quotes="single").

    Works on any text: what cannot be rewritten safely is left as it was. Code that parsed still parses afterwards
    (an axis whose rewrite would break it is skipped). Raises only for an unknown axis or value."""
    for axis, value in axes.items():
        check_value(axis, value)
    valid = None
    for axis in AXES:  # a fixed order, so the result does not depend on the order of the keywords
        if axis not in axes or not isinstance(code, str):
            continue
        try:
            new = _RESTYLERS[axis](code, axes[axis])
        except Exception:  # a rewrite bug must never lose the user's code
            continue
        if new != code:
            valid = parses(code) if valid is None else valid
            if valid and not parses(new):
                continue
            code = new
    return code
