"""Python source for the whole project: which texts are Python (`is_python`), whether one parses (`parses`), and
the lenient forms the training-row gate uses for fragments (`parses_fragment`, `parses_within`).

`parses` answers as `ast.parse` would, through `symtable`: the same parser, then only symbol tables, cheaper than
building AST objects. symtable also refuses a few trees the parser takes (`nonlocal` at module level, a repeated
argument, ...), so only its success decides; a failure is decided by `compile` itself. The lenient forms cache
their verdicts per text, so a worker that re-derives a prompt group parses no text twice."""

import ast
import hashlib
import warnings
from pathlib import PurePath

try:  # CPython's C module behind `symtable.symtable`, without the wrapper objects we never read
    from _symtable import symtable as _symbol_tables
except ImportError:  # another implementation of Python
    from symtable import symtable as _symbol_tables

PYTHON_LANGUAGES = frozenset({"python", "python3", "py"})
PYTHON_SUFFIXES = frozenset({".py", ".pyi", ".pyw"})

_CACHE_SIZE = 200_000  # verdicts, ~20 MB; emptied when full
_cache: dict[bytes, bool] = {}


def is_python(language: str | None, file_path: str | None) -> bool | None:
    """The editor's language id decides when it is given (case and surrounding space aside); otherwise the file's
    suffix. None when the generation names neither: callers decide what unknown means."""
    if language and language.strip():
        return language.strip().lower() in PYTHON_LANGUAGES
    if file_path:
        return PurePath(file_path).suffix.lower() in PYTHON_SUFFIXES
    return None


def parses(source: str) -> bool:
    """Whether `ast.parse` takes the source. A SyntaxWarning (an odd escape, ...) is not a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _compiles(source)


def _compiles(source: str) -> bool:
    """`parses`, for callers that silence warnings themselves (once around several tries)."""
    try:
        _symbol_tables(source, "<source>", "exec")
    except Exception:  # what symtable refuses, compile decides
        try:
            compile(source, "<source>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
            return False
    return True


def parses_fragment(source: str) -> bool:
    """As it is, or as the body of a block: a completion inside a function body comes indented. (What dedenting
    gives, without its regexes, and it also takes a fragment that closes its block and goes on outside it.)"""
    key = hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    found = _cache.get(key)
    if found is None:
        start = len(source) - len(source.lstrip("\n"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if source[start : start + 1] in (" ", "\t"):
                # Indented: as it is, it parses only when its first line is blank or a comment, so block body first.
                found = _compiles("if 1:\n" + source) or _compiles(source)
            else:
                found = _compiles(source)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = found
    return found


def parses_within(source: str, prefix: str | None, suffix: str | None) -> bool:
    """After the code before the cursor (a completion that starts mid-line), then with the code after it too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if prefix and _compiles(prefix + source):
            return True
        return suffix is not None and suffix != "" and _compiles((prefix or "") + source + suffix)


def clear_cache() -> None:
    _cache.clear()
