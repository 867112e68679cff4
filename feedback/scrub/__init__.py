"""Replace credentials in free text with typed placeholders before anything is stored.

`scrub_text(text)` returns the text with every detected secret replaced by `<secret:KIND>`, plus a
count per KIND. What is detected:

* Provider tokens, by shape: AWS access key ids, GitHub, GitLab, Slack (tokens and webhook URLs),
  Stripe, PyPI, SendGrid, Twilio (detect-secrets' plugin regexes), plus OpenAI, Anthropic, Google API
  keys, npm tokens, GitHub fine-grained PATs and Stripe test keys (our own regexes), and JWTs (our own
  linear regex, validated with detect-secrets' JWT check).
* AWS secret access keys next to an "aws ... key" name (detect-secrets' regex, plus our keyword rule
  for unquoted credentials-file lines).
* Whole PEM / OpenSSH / PGP / PuTTY private key blocks, including blocks truncated before their END
  line (redacted to the end of the base64 body).
* The password inside `scheme://user:PASSWORD@host`; user and host are kept.
* Values assigned to secret-sounding names (password, passwd, pwd, db_pass, secret, token, auth,
  api_key, access_key, ... after detect-secrets' keyword list) in Python, JS, Go, PHP, YAML, JSON,
  ini, .env and shell styles, in URL queries, command-line flags and connection strings. Only the
  value is replaced; the name and quotes stay. Left alone: empty or short (< 6 chars) values;
  references (variables, attributes, calls, subscripts, types: an unquoted value is only a literal on
  a whole config line or in a `key=value` parameter); templates (`{x}`, `${X}`, `$X`, `%s`, `<x>`);
  placeholders (`changeme`, `your-api-key-here`, `hf_...`: skipped on purpose, see
  `_PLACEHOLDER_VALUES`); identifier-like strings (`"OPENAI_API_KEY"`, `"my-secret-name"`); paths,
  URLs, text with spaces; ML special tokens (`bos_token = "<s>"`); low-entropy values (see
  `MIN_ENTROPY_MIXED`).

Why the prefilter: the collector scrubs every event and almost no text contains a secret, so the
cost that matters is the clean path. Each detector declares anchors: regex fragments, one of which
occurs (in the lower-cased text, or for a few case-sensitive formats in the original) wherever the
detector can match. Each anchor starts with a few literal strings (`gh[pousr]_`: five of them); all
of them go into one Aho-Corasick automaton per haystack (ahocorasick-rs), which finds every
occurrence of every literal in one pass; an anchor that is more than its literals is then matched in
full where one occurs. Clean text costs one str.lower() and two such passes (sre needed ten scans,
one per first character, for the same answer, and measured slower: benchmarks/README.md); a detector
runs only when one of its own anchors occurs. Every case-insensitive detector is compiled with
re.ASCII, so it cannot match a non-ASCII case variant of an anchor that the lower-cased text would
not show.

Worst case: every detector regex starts at a literal and is bounded or possessive, or is only tried
at the start of a token, and look-backs from a match are bounded, so a long line costs linear time.
detect-secrets' own OpenAI and JWT regexes are not used as scanners for that reason: they backtrack
quadratically on repeated prefixes (benchmarks/README.md has the times).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import re
import re._constants as sre_constants
import re._parser as sre_parser
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ahocorasick_rs
from detect_secrets.filters.heuristic import (
    is_not_alphanumeric_string,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.basic_auth import RESERVED_CHARACTERS
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import DENYLIST as DS_KEYWORD_DENYLIST
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

__all__ = ["SCRUB_VERSION", "scrub_text"]

SCRUB_VERSION = "1"

Span = tuple[int, int, str]  # start, end, kind
Finder = Callable[[str, str], Iterable[Span]]  # (text, lower-cased text) -> spans

MIN_VALUE_LEN = 6
# Shannon entropy (bits per char) a keyword-assigned value needs to count as a secret. A value drawn
# from one character class (only lower case, say) needs more: English words reach 3.0-3.3 bits
# ("production", "upgrades"), random lower-case strings of 14+ letters reach 3.5.
MIN_ENTROPY_MIXED = 2.2
MIN_ENTROPY_ONE_CLASS = 3.5
# Fewer distinct characters than this make a token-shaped match filler ("AC" + "x" * 32 in docs).
MIN_DISTINCT_IN_TOKEN = 8

_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_-]*+")


def _placeholder(kind: str) -> str:
    return f"<secret:{kind}>"


def _match_end(pattern: re.Pattern[str], text: str, position: int) -> int:
    match = pattern.match(text, position)
    return match.end() if match else position


# ---------------------------------------------------------------------------------------------
# Shape rules: one regex per token format.


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    group: int = 0
    # A whole-token rule only matches at the start of a token and is widened to the token's end, so
    # a longer key than the regex spells out (new Stripe keys) is redacted in full.
    whole_token: bool = True
    validate: Callable[[str], bool] | None = None
    # sre finds no literal prefix to scan for in a case-insensitive regex, so such a regex runs as a
    # lower-cased, case-sensitive copy over the lower-cased text (same offsets) where possible.
    lowered: re.Pattern[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        source, flags = self.pattern.pattern, self.pattern.flags
        # Lower-casing the source is safe unless it holds an escape such as \S or \W.
        if flags & re.IGNORECASE and not re.search(r"\\[A-Z]", source):
            object.__setattr__(self, "lowered", re.compile(source.lower(), flags & ~re.IGNORECASE))


def _ascii(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """Recompile a detect-secrets regex with re.ASCII (see the module docstring)."""
    return re.compile(pattern.pattern, (pattern.flags & ~re.UNICODE) | re.ASCII)


def _aligned(text: str, lowered: str) -> bool:
    # str.lower() keeps offsets unless a non-ASCII character changes length when lower-cased.
    return len(lowered) == len(text)


def _find_rule(rule: _Rule) -> Finder:
    def find(text: str, lowered: str) -> Iterator[Span]:
        if rule.lowered is not None and _aligned(text, lowered):
            matches = rule.lowered.finditer(lowered)
        else:
            matches = rule.pattern.finditer(text)
        covered = 0  # end of the last widened token: without this, a long run costs quadratic time
        for match in matches:
            start, end = match.span(rule.group)
            if rule.whole_token:
                if start < covered or (start and text[start - 1] in _WORD_CHARS):
                    continue
                end = covered = _match_end(_TOKEN_TAIL, text, end)
            token = text[start:end]
            if len(set(token)) >= MIN_DISTINCT_IN_TOKEN and (rule.validate is None or rule.validate(token)):
                yield start, end, rule.kind

    return find


def _own(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags | re.ASCII)


_AWS_ACCESS_KEY, _AWS_SECRET_IN_CONTEXT = (_ascii(p) for p in AWSKeyDetector.denylist)
_SLACK_TOKEN, _SLACK_WEBHOOK = (_ascii(p) for p in SlackDetector.denylist)

# The JWT regex only starts at the beginning of a token (the lookbehind right after the literal keeps
# sre's fast literal scan) and its quantifiers are possessive, so repeated "eyJ" stays linear.
_JWT = _own(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]*+=*+\.[A-Za-z0-9_-]++=*+(?:\.[A-Za-z0-9_+/=-]*+)?")
_SK_TOKEN = _own(r"sk-(?<![A-Za-z0-9_-]sk-)[A-Za-z0-9_-]{20,}+")
_OPENAI_LEGACY = _ascii(OpenAIDetector.denylist[0])


def _sk_kind(token: str) -> str | None:
    if token.startswith("sk-ant-"):
        return "anthropic_key"
    if token.startswith(("sk-proj-", "sk-svcacct-", "sk-admin-")) or _OPENAI_LEGACY.match(token):
        return "openai_key"
    return None


def _find_sk_keys(text: str, lowered: str) -> Iterator[Span]:
    # Anchored `.match` on one token keeps detect-secrets' OpenAI regex linear.
    for match in _SK_TOKEN.finditer(text):
        kind = _sk_kind(match.group())
        if kind:
            yield match.start(), match.end(), kind


_DS_TWILIO_ACCOUNT, _DS_TWILIO_API_KEY = (_ascii(p) for p in TwilioKeyDetector.denylist)

# (rule, anchors over the lower-cased text, anchors over the original text); see `_Detector`. An anchor
# need not be the start of the token: one that starts with a character rare in code is cheaper to scan
# for ("yj" of "eyJ", "k-" of "sk-") or shares a gate with other anchors ("pm_" of "npm_").
_TOKEN_RULES: tuple[tuple[_Rule, tuple[str, ...], tuple[str, ...]], ...] = (
    (_Rule("aws_access_key", _AWS_ACCESS_KEY), (), ("A(?:KIA|SIA|BIA|CCA|3T)",)),
    (_Rule("aws_secret_key", _AWS_SECRET_IN_CONTEXT, group=1, whole_token=False), ("aws",), ()),
    *((_Rule("github_token", _ascii(p)), ("gh[pousr]_",), ()) for p in GitHubTokenDetector.denylist),
    (_Rule("github_token", _own(r"github_pat_[A-Za-z0-9_]{22,}")), ("github_pat_",), ()),
    *(
        (_Rule("gitlab_token", _ascii(p)), ("gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-", "gr1348941"), ())
        for p in GitLabTokenDetector.denylist
    ),
    (_Rule("slack_token", _SLACK_TOKEN), ("xox",), ()),
    (_Rule("slack_webhook", _SLACK_WEBHOOK), ("://",), ()),
    *((_Rule("stripe_key", _ascii(p)), ("k_live_",), ()) for p in StripeDetector.denylist),
    (_Rule("stripe_key", _own(r"[rs]k_test_[0-9a-zA-Z]{24}")), ("k_test_",), ()),
    *((_Rule("pypi_token", _ascii(p)), ("pypi-",), ()) for p in PypiTokenDetector.denylist),
    *((_Rule("sendgrid_key", _ascii(p)), (r"sg\.",), ()) for p in SendGridDetector.denylist),
    (_Rule("twilio_key", _DS_TWILIO_ACCOUNT), (), ("AC[a-z0-9]{32}",)),
    (_Rule("twilio_key", _DS_TWILIO_API_KEY), (), ("SK[a-z0-9]{32}",)),
    (_Rule("google_api_key", _own(r"AIza[0-9A-Za-z_-]{35}")), (), ("AIza",)),
    (_Rule("npm_token", _own(r"npm_[A-Za-z0-9]{36}")), ("pm_",), ()),
    (_Rule("jwt", _JWT, validate=JwtTokenDetector.is_formally_valid), ("yj",), ()),
)


# ---------------------------------------------------------------------------------------------
# Private keys.

_PEM_BEGIN = _own(
    r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----"
)
_PEM_END = _own(r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----|---- END SSH2 ENCRYPTED PRIVATE KEY ----")
# A line break inside a key: a real newline, or an escaped "\n" as in JSON or a source string,
# optionally followed by string-concatenation glue (`\n"` newline `"` or `\n' +` newline `'`).
_BREAK = r"""(?:(?:\\r)?\\n(?:["'`][ \t]*+\+?[ \t]*+\r?\n[ \t]*+\+?[ \t]*+["'`])?|\r?\n)"""
# What follows BEGIN when the END line is missing: armor headers (Proc-Type:, Version:), then base64
# lines, each of which must end at a line break or a closing quote.
_PEM_BODY = _own(
    rf"""(?:{_BREAK}[ \t]*+[A-Z][A-Za-z-]*+:[^\n\\"']*+)*+"""
    rf"""(?:(?:{_BREAK}[ \t]*+)++[A-Za-z0-9+/=]++(?=[ \t]*+(?:\r?\n|\\[nr]|["'`,)]|\Z)))*+"""
)
_PUTTY = _own(
    r"PuTTY-User-Key-File-\d+:[^\r\n]*+"
    r"(?:\r?\n(?:[A-Za-z][A-Za-z-]*+:[^\r\n]*+|[A-Za-z0-9+/=]++(?=[ \t]*+(?:\r?\n|\Z))))*+"
)


def _find_private_keys(text: str, lowered: str) -> Iterator[Span]:
    begins = list(_PEM_BEGIN.finditer(text))
    ends = list(_PEM_END.finditer(text))
    next_end = 0
    for index, begin in enumerate(begins):
        while next_end < len(ends) and ends[next_end].start() < begin.end():
            next_end += 1
        next_begin = begins[index + 1].start() if index + 1 < len(begins) else len(text)
        if next_end < len(ends) and ends[next_end].end() <= next_begin:
            yield begin.start(), ends[next_end].end(), "private_key"
        else:
            body_end = _match_end(_PEM_BODY, text, begin.end())
            yield begin.start(), min(body_end, next_begin), "private_key"
    for match in _PUTTY.finditer(text):
        yield match.start(), match.end(), "private_key"


# ---------------------------------------------------------------------------------------------
# Passwords in URLs.

_USER_STOP = re.escape(RESERVED_CHARACTERS)
_PASSWORD_STOP = re.escape(RESERVED_CHARACTERS.replace(":", ""))
_URL_CREDENTIALS = _own(rf"""://[^{_USER_STOP}\s"'`<>]{{0,256}}+:(?P<password>[^{_PASSWORD_STOP}\s"'`<>]{{1,256}}+)@""")
_URL_PLACEHOLDERS = frozenset({"password", "passwd", "pass", "pwd", "passphrase", "secret", "token", "changeme"})


def _is_url_password(value: str) -> bool:
    if value.lower() in _URL_PLACEHOLDERS or len(set(value)) == 1:
        return False
    return not (_looks_templated(value) or is_prefixed_with_dollar_sign(value))


def _find_url_passwords(text: str, lowered: str) -> Iterator[Span]:
    for match in _URL_CREDENTIALS.finditer(text):
        if _is_url_password(match.group("password")):
            yield match.start("password"), match.end("password"), "connection_string_password"


# ---------------------------------------------------------------------------------------------
# Values assigned to secret-sounding names.

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
_CODE_REFERENCE = _own(r"[A-Za-z_$][\w$]*+(?:\.[A-Za-z_$][\w$]*+)*+(?P<call>[(\[].*)?")
_SNAKE_CASE = _own(r"[a-z]++(?:_[a-z0-9]++)++|[A-Z]++(?:_[A-Z0-9]++)++")
# Quoted strings that name something rather than hold a secret.
_IDENTIFIER_LIKE = _own(
    r"[A-Z][A-Z0-9_]*+"  # an env var: "OPENAI_API_KEY"
    r"|\.?[A-Za-z_]++(?:\.[A-Za-z_]++)++|\.[A-Za-z_]++"  # a module or config key: "db.password", ".server"
    r"|_?[a-z]++(?:[_-]++[a-z]++)++"  # snake or kebab case: "_sa_default", "my-secret"
    r"|(?:[A-Z][a-z]++){2,}"  # PascalCase: "RpcGroupManagementToken"
    r"|#[0-9A-Fa-f]{3,8}"  # a colour
)
_AUTH_SCHEME_VALUE = _own(r"(?:bearer|basic|token)[ \t]++(\S++)", re.IGNORECASE)
_AUTH_SCHEME_AFTER = _own(r"[ \t]++([^\s\"'`,;)}\]&]{1,1024}+)")
_AWS_SECRET_VALUE = _own(r"[A-Za-z0-9/+]{40}")
_LINE_PREFIX = _own(r"[ \t]*+(?:(?:export|set|ENV|-)[ \t]++)?")
_LINE_END = _own(r"[ \t]*+(?:#[^\n]*+)?(?:\r?\n|\Z)")
_PARAM_END = _own(r"[\s\"'`;&]|\Z")

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


def _find_keyword(head: str) -> Finder:
    on_lowered, on_original = _keyword_patterns(head)

    def find(text: str, lowered: str) -> Iterator[Span]:
        matches = on_lowered.finditer(lowered) if _aligned(text, lowered) else on_original.finditer(text)
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


def _looks_templated(value: str) -> bool:
    """A template, an elided example ("hf_..."), or an ML special token such as "[MASK2]" or "▁<MID>"."""
    return (
        is_templated_secret(value)
        or value[0] + value[-1] in ("[]", "||", "()")
        or ("<" in value and ">" in value)
        or "..." in value
        or value.startswith("{")
        or value.endswith("}")
        or ("{" in value and "}" in value)
        or any(marker in value for marker in ("${", "{{", "%(", "%s"))
    )


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
    if _is_placeholder(value) or _looks_templated(value) or is_prefixed_with_dollar_sign(value):
        return False
    if "://" in value or value.startswith(("/", "./", "../", "~/")):
        return False
    if is_not_alphanumeric_string(value) or is_sequential_string(value):
        return False
    threshold = MIN_ENTROPY_MIXED if _char_classes(value) > 1 else MIN_ENTROPY_ONE_CLASS
    if assignment.compared:  # `token == "#bygroup"` in a lexer compares symbols more often than secrets
        threshold = MIN_ENTROPY_ONE_CLASS
    return _shannon_entropy(value) >= threshold


# ---------------------------------------------------------------------------------------------
# Prefilter and driver.


@dataclass(frozen=True, slots=True)
class _Detector:
    name: str
    find: Finder
    # Regex fragments, each starting with a literal character, over the lower-cased text (`anchors`)
    # and over the original text (`exact_anchors`, for case-sensitive formats that start with a
    # character that is rare in code). Whenever `find` can return a span, one of them matches.
    anchors: tuple[str, ...] = ()
    exact_anchors: tuple[str, ...] = ()


# Regexes over the lower-cased text that start a secret-sounding name. A bare "key" is far too common
# in code (`sorted(key=...)`), so that head only counts inside a compound such as api_key or apiKey.
_KEYWORD_HEADS = {
    "pass": "pass",
    "pwd": "pwd",
    "secret": "secret",
    "token": "token",
    "auth": "auth",
    "key": "key(?<=[a-z0-9_-]key)",
}

# In priority order: where spans overlap, the earlier detector's span wins.
_DETECTORS = (
    _Detector("private_key", _find_private_keys, ("private key", "putty-user-key")),
    *(
        _Detector(f"{rule.kind}_{index}", _find_rule(rule), anchors, exact)
        for index, (rule, anchors, exact) in enumerate(_TOKEN_RULES)
    ),
    _Detector("openai_anthropic", _find_sk_keys, ("k-",)),
    _Detector("url_password", _find_url_passwords, ("://",)),
    *(_Detector(f"keyword_{name}", _find_keyword(head), (head,)) for name, head in _KEYWORD_HEADS.items()),
)


# The prefilter: every anchor as the literal strings it can start with (`_anchor_literals`), all of them in one
# Aho-Corasick automaton per haystack (the lower-cased text, the original text), searched in one pass. An anchor
# that is more than its literals (`AC[a-z0-9]{32}`, `key(?<=[a-z0-9_-]key)`) is matched in full where one of its
# literals occurs.
_MAX_LITERALS = 32  # per anchor: a character class or alternation that would expand to more ends the literal


def _anchor_literals(anchor: str) -> tuple[list[str], bool]:
    """The literal strings that every match of `anchor` starts with (at least 2 characters each), and whether they
    are the whole anchor. Expands literals, small character classes and non-capturing alternations; stops at
    anything else (repeats, lookarounds). Raises ValueError for an anchor without a literal start of 2 characters
    or with a capturing group."""
    if re.compile(anchor).groups:
        raise ValueError(f"an anchor must capture nothing: {anchor!r}")
    literals, whole = _expand(list(sre_parser.parse(anchor)))
    if not literals or min(map(len, literals)) < 2:
        raise ValueError(f"an anchor must start with a literal of 2 characters or more: {anchor!r}")
    return sorted(literals), whole


def _expand(items: list[tuple[Any, Any]]) -> tuple[set[str], bool]:
    prefixes = {""}
    for op, value in items:
        if op is sre_constants.LITERAL:
            options, whole = {chr(value)}, True
        elif op is sre_constants.IN and all(kind is sre_constants.LITERAL for kind, _ in value):
            options, whole = {chr(code) for _, code in value}, True
        elif op is sre_constants.SUBPATTERN and value[0] is None and not value[1] and not value[2]:
            options, whole = _expand(list(value[3]))
        elif op is sre_constants.BRANCH:
            expanded = [_expand(list(branch)) for branch in value[1]]
            options, whole = set().union(*(o for o, _ in expanded)), all(w for _, w in expanded)
        else:
            return prefixes, False
        if not options or "" in options or len(prefixes) * len(options) > _MAX_LITERALS:
            return prefixes, False
        prefixes = {prefix + option for prefix in prefixes for option in options}
        if not whole:
            return prefixes, False
    return prefixes, True


@dataclass(frozen=True, slots=True)
class _Prefilter:
    automaton: ahocorasick_rs.AhoCorasick
    masks: tuple[int, ...]  # per literal: the detectors (bitmask over _DETECTORS) of the anchor it starts
    checks: tuple[re.Pattern[str] | None, ...]  # per literal: the whole anchor where it is more than the literal


def _build_prefilters(detectors: tuple[_Detector, ...]) -> tuple[_Prefilter | None, _Prefilter | None]:
    """(over the lower-cased text, over the original text)."""
    built: list[_Prefilter | None] = []
    for exact in (False, True):
        entries: dict[tuple[str, str | None], int] = {}  # (literal, anchor to check) -> mask
        for bit, detector in enumerate(detectors):
            for anchor in detector.exact_anchors if exact else detector.anchors:
                literals, whole = _anchor_literals(anchor)
                for literal in literals:
                    key = (literal, None if whole else anchor)
                    entries[key] = entries.get(key, 0) | 1 << bit
        if not entries:
            built.append(None)
            continue
        keys = list(entries)
        built.append(
            _Prefilter(
                # Standard semantics, overlapping: every occurrence of every literal, so none hides another.
                automaton=ahocorasick_rs.AhoCorasick(
                    [literal for literal, _ in keys], matchkind=ahocorasick_rs.MatchKind.Standard
                ),
                masks=tuple(entries.values()),
                checks=tuple(None if anchor is None else re.compile(anchor) for _, anchor in keys),
            )
        )
    return built[0], built[1]


_LOWERED_PREFILTER, _EXACT_PREFILTER = _build_prefilters(_DETECTORS)


def _fired_detectors(text: str, lowered: str) -> int:
    """Bitmask of the detectors whose anchors occur in the text (the prefilter)."""
    fired = 0
    for prefilter, haystack in ((_LOWERED_PREFILTER, lowered), (_EXACT_PREFILTER, text)):
        if prefilter is None:
            continue
        masks, checks = prefilter.masks, prefilter.checks
        for index, start, _ in prefilter.automaton.find_matches_as_indexes(haystack, overlapping=True):
            mask = masks[index]
            if mask & ~fired:
                check = checks[index]
                if check is None or check.match(haystack, start):
                    fired |= mask
    return fired


def _select_spans(spans: Iterable[Span]) -> list[Span]:
    """Keep spans in the order given, dropping any that overlaps one already kept; return them sorted."""
    kept: list[Span] = []  # sorted and disjoint
    for span in spans:
        start, end, _ = span
        if start >= end:
            continue
        index = bisect.bisect_left(kept, span)
        if index and kept[index - 1][1] > start:
            continue
        if index < len(kept) and kept[index][0] < end:
            continue
        kept.insert(index, span)
    return kept


def _scrub(text: str, lowered: str, detectors: int) -> tuple[str, dict[str, int]]:
    found = (
        span for bit, detector in enumerate(_DETECTORS) if detectors >> bit & 1 for span in detector.find(text, lowered)
    )
    spans = _select_spans(found)
    if not spans:
        return text, {}
    pieces: list[str] = []
    counts, position = Counter[str](), 0
    for start, end, kind in spans:
        pieces += (text[position:start], _placeholder(kind))
        counts[kind] += 1
        position = end
    pieces.append(text[position:])
    return "".join(pieces), dict(counts)


# Joins the texts that `may_hold_secrets` scans at once. No anchor matches across it: anchors are literals or character
# classes without whitespace or NUL, and the one lookbehind (`key`'s) wants a name character, as at a text's start.
_SEPARATOR = "\n\x00\n"


def may_hold_secrets(texts: Sequence[str]) -> bool:
    """False when no detector's anchor occurs in any of the texts: `scrub_text` would then return every one of them
    unchanged. One prefilter pass over them all: an event's few texts cost one `lower()` and one pass instead of
    one per text (the Python around each pass cost as much as the pass)."""
    joined = texts[0] if len(texts) == 1 else _SEPARATOR.join(texts)
    return _fired_detectors(joined, joined.lower()) != 0


def scrub_text(text: str) -> tuple[str, dict[str, int]]:
    """Return the text with every detected secret replaced by `<secret:KIND>` and a count per KIND
    (empty dict when clean).

    Idempotent: scrub_text(scrubbed)[0] == scrubbed and counts {}.
    """
    lowered = text.lower()
    fired = _fired_detectors(text, lowered)
    if not fired:
        return text, {}
    return _scrub(text, lowered, fired)
