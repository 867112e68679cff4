"""Whether Python code parses, leniently: completions are fragments (a block body, the rest of a line).

This is the training-row build's costliest step (one parse per edit; ~150 µs for a thousand characters), so:
- the parse runs through `symtable`, which runs the same parser as `compile(..., PyCF_ONLY_AST)` and then builds
  only its symbol tables, not Python's AST objects: a fifth cheaper (150 against 195 µs). It also rejects a few
  trees that the parser takes (`nonlocal` at module level, a repeated argument, ...), so only its success decides:
  a failure is decided by `compile` itself, and the answer is always the parser's. It is called through its C
  module, `_symtable` (what `symtable.symtable` calls before it wraps the result in Python objects we never read);
- an indented fragment is tried as a block body first, where it parses (as it is, it almost never does);
- verdicts are cached per text (by a 16-byte BLAKE2 digest) for the life of the process, so a worker that
  re-derives a prompt group, or rebuilds everything under new gates, parses no text twice.
"""

import ast
import hashlib

try:  # CPython's C module behind `symtable.symtable`, without the wrapper objects we never read
    from _symtable import symtable as _symbol_tables
except ImportError:  # another implementation of Python
    from symtable import symtable as _symbol_tables

_CACHE_SIZE = 200_000  # verdicts, ~20 MB; emptied when full (a rebuild of 100,000 generations holds ~55,000)
_cache: dict[bytes, bool] = {}


def compiles(source: str) -> bool:
    """Whether `ast.parse` takes the source. Callers silence SyntaxWarnings."""
    try:
        _symbol_tables(source, "<training-row>", "exec")
    except Exception:  # what symtable refuses, compile decides
        return _ast_compiles(source)
    return True


def _ast_compiles(source: str) -> bool:
    try:
        compile(source, "<training-row>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def parses(source: str) -> bool:
    """As it is, or as the body of a block: a completion inside a function body comes indented. (What dedenting
    gives, without its regexes, and it also takes a fragment that closes its block and goes on outside it.)"""
    key = hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    found = _cache.get(key)
    if found is None:
        start = len(source) - len(source.lstrip("\n"))
        if source[start : start + 1] in (" ", "\t"):
            # Indented: as it is, it parses only when its first line is blank or a comment, so block body first.
            found = compiles("if 1:\n" + source) or compiles(source)
        else:
            found = compiles(source)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = found
    return found


def parses_within(source: str, prefix: str | None, suffix: str | None) -> bool:
    """After the code before the cursor (a completion that starts mid-line), then with the code after it too."""
    if prefix and compiles(prefix + source):
        return True
    return suffix is not None and suffix != "" and compiles((prefix or "") + source + suffix)


def clear_cache() -> None:
    _cache.clear()
