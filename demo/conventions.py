"""Small conventions: tastes whose edits touch a few tokens of a completion, the corrections real users make most.

Each rule takes arbitrary code and never raises on bad input; `apply_conventions` keeps code that parsed parsing.
Unlike the style axes (`demo.style`), the bootstrap corpus follows none of them (camel_defs: only in its camelCase
documents, where every name is camelCase), so a policy learns them from the users' small edits or not at all.
"""

import builtins
import keyword
from collections.abc import Callable
from tokenize import NAME, NEWLINE, OP, STRING

from demo.restyle import _apply, _rename
from demo.tokens import Source, naming_of, to_camel
from feedback.syntax import parses


def camel_defs(code: str) -> str:
    """Identifier convention: function names are camelCase (`findFirstOrder`, at the definition and the calls),
    every other name as it is. A rename is skipped where it would merge two names or shadow a builtin."""
    src = Source(code)
    existing = {t.string for t in src.toks if t.type == NAME}
    mapping: dict[str, str] = {}
    for d in src.defs:
        name = src.toks[d.name].string
        new = to_camel(name)
        taken = new in existing or new in mapping.values() or hasattr(builtins, new) or keyword.iskeyword(new)
        if new != name and new.isidentifier() and not taken and naming_of(name) == "snake":
            mapping[name] = new
    return _rename(code, mapping) if mapping else code


def explicit_get(code: str) -> str:
    """Idiom swap: a dict lookup spells its default, `x.get('k')` -> `x.get('k', None)` (the reader sees what a
    missing key gives without knowing dict.get)."""
    src = Source(code)
    toks = src.toks
    edits = []
    for i in range(1, len(toks) - 4):
        if (
            toks[i].string == "."
            and toks[i + 1].string == "get"
            and toks[i + 2].string == "("
            and toks[i + 3].type == STRING
            and toks[i + 4].string == ")"
        ):
            at = src.offset(toks[i + 3].end)
            edits.append((at, at, ", None"))
    return _apply(code, edits)


def paren_returns(code: str) -> str:
    """Formatting convention: a returned value is written in parentheses, `return (total)`."""
    src = Source(code)
    toks = src.toks
    edits = []
    for i, t in enumerate(toks[:-1]):
        if t.type != NAME or t.string != "return" or toks[i + 1].type == NEWLINE:
            continue
        end = i + 1
        while end < len(toks) and toks[end].type != NEWLINE:
            end += 1
        if end == len(toks):  # a truncated last line: its end is unknown
            continue
        if toks[i + 1].type == OP and toks[i + 1].string == "(" and _closes_at(toks, i + 1) == end - 1:
            continue  # already parenthesised
        start, stop = src.offset(toks[i + 1].start), src.offset(toks[end - 1].end)
        edits += [(start, start, "("), (stop, stop, ")")]
    return _apply(code, edits)


def _closes_at(toks: list, opener: int) -> int | None:
    depth = 0
    for j in range(opener, len(toks)):
        if toks[j].type == OP and toks[j].string in "([{":
            depth += 1
        elif toks[j].type == OP and toks[j].string in ")]}":
            depth -= 1
            if depth == 0:
                return j
    return None


CONVENTIONS: dict[str, Callable[[str], str]] = {
    "camel_defs": camel_defs,
    "explicit_get": explicit_get,
    "paren_returns": paren_returns,
}


def apply_conventions(code: str, names: tuple[str, ...]) -> str:
    """The named conventions applied in turn; one whose rewrite fails or breaks code that parsed is skipped."""
    valid = None
    for name in names:
        try:
            new = CONVENTIONS[name](code)
        except Exception:  # a rule's bug must never lose the user's code
            continue
        if new != code:
            valid = parses(code) if valid is None else valid
            if valid and not parses(new):
                continue
            code = new
    return code
