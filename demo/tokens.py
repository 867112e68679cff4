"""A Python token reader for arbitrary code, model output included (truncated, broken, not Python at all): function
headers, the names the code defines, string literals and their f-string fields.

It reads tokens rather than an AST, because a truncated function has no AST but still shows its style, and it never
raises on bad input: what it cannot read, it leaves out.
"""

import io
import keyword
import re
import tokenize
from dataclasses import dataclass
from tokenize import DEDENT, ENDMARKER, INDENT, NAME, NEWLINE, STRING, TokenInfo


def to_camel(name: str) -> str:
    core = name.strip("_")
    parts = [p for p in core.split("_") if p]
    if len(parts) < 2:
        return name
    lead = name[: len(name) - len(name.lstrip("_"))]
    trail = name[len(name.rstrip("_")) :]
    return lead + parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]) + trail


def to_snake(name: str) -> str:
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


def naming_of(name: str) -> str | None:
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


class Source:
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


OPENERS = ("(", "[", "{")
CLOSERS = (")", "]", "}")


@dataclass
class Param:
    name: int  # token index
    annotation: tuple[int, int] | None  # first and last token index
    default: int | None  # first token index of the default value
    starred: bool


@dataclass
class Def:
    keyword: int
    name: int
    params: list[Param]
    close: int | None = None  # the ")" closing the parameters
    returns: tuple[int, int] | None = None
    colon: int | None = None  # None: the header is incomplete (truncated or broken)
    body: int | None = None  # the INDENT starting a block body
    docstring: int | None = None
    decidable_docstring: bool = False  # the body shows its first statement


def _param(toks: list[TokenInfo], segment: list[int]) -> list[Param]:
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
            if s in OPENERS:
                depth += 1
            elif s in CLOSERS:
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
    return [Param(name, annotation, default, starred=i > 0)]


def _def_at(toks: list[TokenInfo], k: int) -> list[Def]:
    """The function header starting at toks[k] == "def", as far as the tokens go ([] if it is not one)."""
    n = len(toks)
    if k + 2 >= n or toks[k + 1].type != NAME or toks[k + 2].string != "(":
        return []
    d = Def(keyword=k, name=k + 1, params=[])
    segment: list[int] = []
    depth, j = 0, k + 3
    while j < n:
        t = toks[j]
        if t.type in (NEWLINE, ENDMARKER) or (t.type == NAME and t.string == "def"):
            break
        if t.string in OPENERS:
            depth += 1
        elif t.string in CLOSERS:
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
            if s in OPENERS:
                depth += 1
            elif s in CLOSERS:
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


def is_name(tok: TokenInfo) -> bool:
    return tok.type == NAME and not keyword.iskeyword(tok.string)


def defined_names(src: Source) -> set[str]:
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
                if is_name(toks[j]) and src.prev(j) != ".":
                    names.add(toks[j].string)
                j += 1
        elif t.string == "as" and i + 1 < n and is_name(toks[i + 1]):
            names.add(toks[i + 1].string)
        elif i + 1 < n and toks[i + 1].string == ":=" and is_name(t):
            names.add(t.string)
        elif is_name(t) and (i == 0 or toks[i - 1].type in (NEWLINE, INDENT, DEDENT) or src.prev(i) == ";"):
            # `a = ...`, `a, b = ...`, `a: int = ...`, `a += ...` at the start of a statement
            j = i
            while j < n and (is_name(toks[j]) or toks[j].string in (",", "*")):
                j += 1
            if j < n and toks[j].string in _ASSIGN_OPS and (toks[j].string != ":" or j == i + 1):
                names.update(toks[m].string for m in range(i, j) if is_name(toks[m]))
    return names


_STRING_START = re.compile(r"([A-Za-z]*)('''|\"\"\"|'|\")")


def split_string(literal: str) -> tuple[str, str, str] | None:
    """(prefix, quote, body) of one string token, or None if it is not a complete literal."""
    m = _STRING_START.match(literal)
    if not m or len(literal) < len(m[0]) + len(m[2]) or not literal.endswith(m[2]):
        return None
    return m[1], m[2], literal[len(m[0]) : len(literal) - len(m[2])]


@dataclass
class Field:
    start: int  # index of "{" in the f-string body
    end: int  # index after "}"
    expr: tuple[int, int]
    tail: str  # conversion and format spec, e.g. "!r:>4"
    plain: bool  # no "{x=}" self-documenting form and no nested fields in the spec


def fstring_fields(body: str) -> list[Field] | None:
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
        fields.append(Field(start, i + 1, (expr_start, tail_start), body[tail_start:i], plain))
        i += 1
    return fields


def top_level_comma(expr: str) -> bool:
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
