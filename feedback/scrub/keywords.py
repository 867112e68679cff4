"""Values assigned to secret-sounding names.

Names: password, passwd, pwd, db_pass, secret, token, auth, api_key, access_key, ... (after
detect-secrets' keyword list), in Python, JS, Go, PHP, YAML, JSON, ini, .env and shell styles, in URL
queries, command-line flags and connection strings. Only the value is replaced; the name and quotes
stay. Left alone: empty or short (< 6 chars) values; references (variables, attributes, calls,
subscripts, types: an unquoted value is only a literal on a whole config line or in a `key=value`
parameter); templates (`{x}`, `${X}`, `$X`, `%s`, `<x>`); placeholders (`changeme`,
`your-api-key-here`, `hf_...`: skipped on purpose, see `_PLACEHOLDER_VALUES`); identifier-like strings
(`"OPENAI_API_KEY"`, `"my-secret-name"`); paths, URLs, text with spaces; ML special tokens
(`bos_token = "<s>"`); low-entropy values (see `MIN_ENTROPY_MIXED`).

One detector per name head (`KEYWORD_HEADS`): the head is the detector's anchor in prefilter.py, and the
regex starts at it, so a long line costs linear time; the rest of the name is read backwards from the head,
at most `_MAX_NAME_PREFIX` characters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from detect_secrets.filters.heuristic import (
    is_not_alphanumeric_string,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
)
from detect_secrets.plugins.keyword import DENYLIST as DS_KEYWORD_DENYLIST

from feedback.scrub.shapes import Finder, Span, aligned, looks_templated, own_regex

MIN_VALUE_LEN = 6
# Shannon entropy (bits per char) a keyword-assigned value needs to count as a secret. A value drawn
# from one character class (only lower case, say) needs more: English words reach 3.0-3.3 bits
# ("production", "upgrades"), random lower-case strings of 14+ letters reach 3.5.
MIN_ENTROPY_MIXED = 2.2
MIN_ENTROPY_ONE_CLASS = 3.5

# Regexes over the lower-cased text that start a secret-sounding name. A bare "key" is far too common
# in code (`sorted(key=...)`), so that head only counts inside a compound such as api_key or apiKey.
KEYWORD_HEADS = {
    "pass": "pass",
    "pwd": "pwd",
    "secret": "secret",
    "token": "token",
    "auth": "auth",
    "key": "key(?<=[a-z0-9_-]key)",
}

_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_MAX_NAME_PREFIX = 64
_MAX_LINE_PREFIX = 32
# detect-secrets' keyword list spells "<prefix>_?key" names (api_key, db_key, ...); we add a few.
_DS_KEY_PREFIXES = {entry.removesuffix("_?key") for entry in DS_KEYWORD_DENYLIST if entry.endswith("_?key")}
_KEY_PREFIXES = frozenset(_DS_KEY_PREFIXES | {"access", "secret", "master", "signing", "encryption"})
_PASSWORD_WORDS = frozenset({"passwd", "password", "passphrase", "passcode", "pwd"})
_AUTH_WORDS = frozenset({"auth", "authorization", "authkey", "authtoken"})
# A name containing any of these words holds something about a secret, or is an ML vocabulary token,
# rather than the secret itself.
_NOT_SECRET_WORDS = frozenset(
    {"url", "uri", "urls", "endpoint", "host", "hostname", "port", "domain", "region", "location"}
    | {"path", "file", "filename", "files", "dir", "directory", "env", "var", "vars", "store", "manager"}
    | {"name", "names", "type", "types", "kind", "class", "id", "ids", "version", "format", "encoding", "charset"}
    | {"len", "length", "size", "count", "num", "number", "max", "min", "limit", "strength", "required"}
    | {"ttl", "exp", "expiry", "expires", "expire", "expiration", "timeout", "reset"}
    | {"header", "headers", "field", "fields", "column", "attr", "attribute", "param", "arg", "input"}
    | {"prefix", "suffix", "regex", "pattern", "rule", "rules", "policy", "provider", "validator", "validation"}
    | {"label", "prompt", "help", "hint", "message", "msg", "text", "placeholder", "error", "errors"}
    | {"algorithm", "alg", "algo", "method", "scheme", "mode", "scope", "scopes", "audience", "issuer"}
    | {"user", "username", "login", "email", "secretary", "secrets", "passwords", "keys"}
    | {"bos", "eos", "pad", "unk", "mask", "sep", "cls", "special", "start", "end", "stop"}
    | {"tokens", "tokenizer", "tokenizers", "tokenize", "tokenized", "tokenization", "classification", "public"}
    | {"per", "loss", "logps", "logprobs", "logits", "probs", "prob", "score", "scores", "weight", "weights"}
    | {"idx", "index", "indices", "position", "positions", "offset", "offsets", "budget", "usage", "cost", "rate"}
    | {"vocab", "embedding", "embeddings", "image", "video", "audio", "middle", "eot", "eom", "fim"}
)
# Values that stand in for a secret in examples and templates. Skipping them is a judgement call:
# they are not worth a placeholder, and `<secret:password>` in place of "changeme" would make
# training data less faithful for no gain.
_PLACEHOLDER_VALUES = frozenset(
    {"changeme", "change_me", "change-me", "changeit", "password", "passwd", "secret", "token"}
    | {"apikey", "api_key", "api-key", "example", "sample", "placeholder", "redacted", "dummy"}
    | {"test", "testing", "default", "none", "null", "nil", "undefined", "todo", "fixme", "notset", "unset", "empty"}
)
_PLACEHOLDER_PREFIXES = ("your", "insert", "replace", "enter-", "enter_", "put-", "put_")
_TYPE_NAMES = frozenset(
    {"str", "string", "bytes", "int", "float", "bool", "dict", "list", "tuple", "set", "any", "optional", "none"}
    | {"secretstr", "secretbytes"}
)
_COMPARISONS = frozenset({"==", "===", "!=", "!=="})
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token"})
_CHAR_CLASSES = tuple(re.compile(char_class) for char_class in ("[a-z]", "[A-Z]", "[0-9]", "[^A-Za-z0-9]"))
_WHITESPACE = re.compile(r"\s")

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_CODE_REFERENCE = own_regex(r"[A-Za-z_$][\w$]*+(?:\.[A-Za-z_$][\w$]*+)*+(?P<call>[(\[].*)?")
_SNAKE_CASE = own_regex(r"[a-z]++(?:_[a-z0-9]++)++|[A-Z]++(?:_[A-Z0-9]++)++")
# Quoted strings that name something rather than hold a secret.
_IDENTIFIER_LIKE = own_regex(
    r"[A-Z][A-Z0-9_]*+"  # an env var: "OPENAI_API_KEY"
    r"|\.?[A-Za-z_]++(?:\.[A-Za-z_]++)++|\.[A-Za-z_]++"  # a module or config key: "db.password", ".server"
    r"|_?[a-z]++(?:[_-]++[a-z]++)++"  # snake or kebab case: "_sa_default", "my-secret"
    r"|(?:[A-Z][a-z]++){2,}"  # PascalCase: "RpcGroupManagementToken"
    r"|#[0-9A-Fa-f]{3,8}"  # a colour
)
_AUTH_SCHEME_VALUE = own_regex(r"(?:bearer|basic|token)[ \t]++(\S++)", re.IGNORECASE)
_AUTH_SCHEME_AFTER = own_regex(r"[ \t]++([^\s\"'`,;)}\]&]{1,1024}+)")
_AWS_SECRET_VALUE = own_regex(r"[A-Za-z0-9/+]{40}")
_LINE_PREFIX = own_regex(r"[ \t]*+(?:(?:export|set|ENV|-)[ \t]++)?")
_LINE_END = own_regex(r"[ \t]*+(?:#[^\n]*+)?(?:\r?\n|\Z)")
_PARAM_END = own_regex(r"[\s\"'`;&]|\Z")

# The value part of an assignment. The pattern runs on the lower-cased text; values are read back
# from the original text at the same offsets.
_VALUE = (
    r"(?P<prefix>[rbuf]{0,2})(?:\"(?P<dq>[^\"\n]{0,1024}+)\"|'(?P<sq>[^'\n]{0,1024}+)')"
    r"|(?P<bare>[^\s\"'`,;)}\]&]{1,1024}+)"
)
_ASSIGNMENT = (
    r"[a-z0-9_.-]{0,40}+)"  # rest of the name, closing the `name` group opened before the head
    r"(?P<close>[\"'`\]]{0,2}+)(?P<op>"
    r":[ \t]*+[a-z_][a-z0-9_.\[\]|, ]{0,60}?[ \t]*+=(?!=)[ \t]*+"  # annotated: `password: str = "..."`
    r"|:(?!=)[ \t]*+"  # YAML, JSON, dict literal; no space before the colon, unlike prose
    r"|[ \t]*+(?::=|=>|={1,3}|!==?)[ \t]*+)"
    rf"(?:{_VALUE})"
)


@dataclass(frozen=True, slots=True)
class _Assignment:
    value: str
    start: int
    quoted: bool
    compared: bool  # `==` or `!=` rather than an assignment
    auth_header: bool  # the name is "Authorization" or the like, whose value may start with "Bearer "
    raw: bool  # a raw string literal, r"...", which in code nearly always holds a regex
    # Where an unquoted value sits: a whole "line" (`NAME=value` in .env or shell, `name: value` in YAML,
    # `name = value` in ini), a "param" (`key=value` in a URL query, a command-line flag, a connection
    # string), or elsewhere, "code", where it is an expression or prose: a literal secret would be quoted.
    context: str


def _keyword_patterns(head: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    source = rf"(?P<name>{head}" + _ASSIGNMENT
    return re.compile(source, re.ASCII), re.compile(source, re.ASCII | re.IGNORECASE)


def find_keyword(head: str) -> Finder:
    on_lowered, on_original = _keyword_patterns(head)

    def find(text: str, lowered: str) -> Iterator[Span]:
        matches = on_lowered.finditer(lowered) if aligned(text, lowered) else on_original.finditer(text)
        for match in matches:
            value_start, value_end = match.span(_value_group(match))
            if value_end - value_start < MIN_VALUE_LEN and text[value_start:value_end].lower() not in _AUTH_SCHEMES:
                continue
            name_start = _name_start(text, match.start("name"))
            if text[name_start - 1 : name_start] == "<":  # our own placeholder, `<secret:...>`
                continue
            name = text[name_start : match.end("name")]
            kind = _kind_for_name(name)
            if kind is None:
                continue
            assignment = _read_assignment(text, match, name, name_start)
            if assignment.compared and not assignment.quoted:  # compared with a variable or constant
                continue
            span = _secret_value_span(kind, assignment, text, match.end())
            if span is not None:
                yield span

    return find


def _name_start(text: str, head_start: int) -> int:
    start, floor = head_start, max(0, head_start - _MAX_NAME_PREFIX)
    while start > floor and text[start - 1] in _NAME_CHARS:
        start -= 1
    return start


def _value_group(match: re.Match[str]) -> str:
    return match.lastgroup or "bare"  # the value's group is the last to close, and always matches


def _read_assignment(text: str, match: re.Match[str], name: str, name_start: int) -> _Assignment:
    group = _value_group(match)
    value_start, value_end = match.span(group)
    return _Assignment(
        value=text[value_start:value_end],
        start=value_start,
        quoted=group != "bare",
        compared=match.group("op").strip() in _COMPARISONS,
        auth_header=_names_auth(name),
        raw="r" in (match.group("prefix") or ""),
        context=_context(text, match, name, name_start) if group == "bare" else "code",
    )


def _context(text: str, match: re.Match[str], name: str, name_start: int) -> str:
    op = match.group("op")
    # A value followed by "," or ")" is a keyword argument, hence the check for the end of the line.
    if (
        (op.strip() == "=" or (op.strip() == ":" and op[-1] in " \t"))
        and not match.group("close")
        and _starts_line(text, name_start)
        and _LINE_END.match(text, match.end())
    ):
        return "line"
    if op == "=" and _PARAM_END.match(text, match.end()):
        if text[name_start - 1 : name_start] in ("?", "&", ";") or name.startswith("-") or name.isupper():
            return "param"
    return "code"


def _starts_line(text: str, position: int) -> bool:
    """Is `position` preceded on its line only by indentation and `export`, `set`, `ENV` or `-`?"""
    floor = max(0, position - _MAX_LINE_PREFIX)  # bounded, so that a long line costs linear time
    line_start = text.rfind("\n", floor, position) + 1
    if line_start == 0 and floor > 0:
        return False
    return _LINE_PREFIX.fullmatch(text, line_start, position) is not None


def _secret_value_span(kind: str, assignment: _Assignment, text: str, match_end: int) -> Span | None:
    value, start = assignment.value, assignment.start
    # "Authorization: Bearer <credential>": redact the credential, keep the scheme.
    scheme = _AUTH_SCHEME_VALUE.fullmatch(value) if assignment.quoted and assignment.auth_header else None
    if scheme:
        value, start = scheme.group(1), start + scheme.start(1)
    elif not assignment.quoted and assignment.auth_header and value.lower() in _AUTH_SCHEMES:
        after = _AUTH_SCHEME_AFTER.match(text, match_end)
        if after is None:
            return None
        value, start = after.group(1), after.start(1)
        assignment = dataclasses.replace(assignment, context="param")  # a credential, never an expression
    if kind == "aws_secret_key" and not _AWS_SECRET_VALUE.fullmatch(value):
        kind = "secret"
    if kind != "aws_secret_key" and not _is_plausible_secret(value, assignment):
        return None
    return start, start + len(value), kind


def _name_words(name: str) -> list[str]:
    return [word.lower() for word in _NON_ALNUM.split(_CAMEL_BOUNDARY.sub("_", name)) if word]


@functools.lru_cache(maxsize=4096)
def _kind_for_name(name: str) -> str | None:
    # Only the last dotted part names the value: `self.password` does, `token.markup` does not.
    words = _name_words(name.rsplit(".", 1)[-1])
    if not words or any(word.rstrip(string.digits) in _NOT_SECRET_WORDS for word in words):
        return None
    joined = "".join(words)
    if "aws" in words and "secret" in joined:
        return "aws_secret_key"
    # "pass" names a password only at the end of a longer name (db_pass): not in pass_dict, nor in
    # prose ("first pass: ...").
    if (len(words) > 1 and words[-1] == "pass") or any(word in _PASSWORD_WORDS for word in words) or "passw" in joined:
        return "password"
    if "secret" in joined:
        return "secret"
    if "token" in joined or any(word in _AUTH_WORDS for word in words):
        return "token"
    pairs = zip(words, words[1:], strict=False)
    if any(first in _KEY_PREFIXES and second == "key" for first, second in pairs):
        return "api_key"
    if any(word.endswith("key") and word.removesuffix("key") in _KEY_PREFIXES for word in words):
        return "api_key"
    return None


@functools.lru_cache(maxsize=4096)
def _names_auth(name: str) -> bool:
    return any(word in _AUTH_WORDS for word in _name_words(name))


def _is_placeholder(value: str) -> bool:
    lowered = value.lower()
    return (
        lowered in _PLACEHOLDER_VALUES
        or lowered.startswith(_PLACEHOLDER_PREFIXES)
        or lowered.endswith(("_here", "-here"))
    )


def _looks_like_code(value: str, context: str) -> bool:
    """Is an unquoted value a reference (variable, attribute, call, type, expression) rather than a literal?"""
    if context == "code" or value[0] in "([{!":  # an expression, or a YAML tag such as `!vault`
        return True
    operand = value.lstrip("-+~*&")  # `-outputs.log_probs` is an expression too
    reference = _CODE_REFERENCE.fullmatch(operand)
    if reference is None:
        return False
    if reference.group("call") or operand != value:
        return True
    # On a whole line, `password: hunter2` and `password = hunter2xyz` are literals, while `token: str`,
    # `password = db_password` and `password = DB_PASSWORD` name something.
    return context == "line" and (
        "." in value
        or value[0] == "_"
        or value.lower() in _TYPE_NAMES
        or (value[0].isupper() and value.isalpha())
        or _SNAKE_CASE.fullmatch(value) is not None
    )


def _shannon_entropy(value: str) -> float:
    """Bits per character over the characters actually present.

    detect-secrets' `calculate_shannon_entropy` only counts characters of the plugin's fixed charset
    (hex or base64), which would ignore the punctuation that makes a password strong.
    """
    length = len(value)
    return -sum(n / length * math.log2(n / length) for n in Counter(value).values())


def _char_classes(value: str) -> int:
    return sum(1 for char_class in _CHAR_CLASSES if char_class.search(value))


def _is_plausible_secret(value: str, assignment: _Assignment) -> bool:
    if len(value) < MIN_VALUE_LEN or _WHITESPACE.search(value):
        return False
    if assignment.quoted:
        if _IDENTIFIER_LIKE.fullmatch(value):
            return False
        if "(?" in value or (assignment.raw and any(c in value for c in "\\[(")):  # a regex
            return False
    elif _looks_like_code(value, assignment.context):
        return False
    if _is_placeholder(value) or looks_templated(value) or is_prefixed_with_dollar_sign(value):
        return False
    if "://" in value or value.startswith(("/", "./", "../", "~/")):
        return False
    if is_not_alphanumeric_string(value) or is_sequential_string(value):
        return False
    threshold = MIN_ENTROPY_MIXED if _char_classes(value) > 1 else MIN_ENTROPY_ONE_CLASS
    if assignment.compared:  # `token == "#bygroup"` in a lexer compares symbols more often than secrets
        threshold = MIN_ENTROPY_ONE_CLASS
    return _shannon_entropy(value) >= threshold
