"""Secrets recognised by their shape, wherever they occur:

* Provider tokens: AWS access key ids, GitHub, GitLab, Slack (tokens and webhook URLs), Stripe, PyPI,
  SendGrid, Twilio (detect-secrets' plugin regexes), plus OpenAI, Anthropic, Google API keys, npm tokens,
  GitHub fine-grained PATs and Stripe test keys (our own regexes), and JWTs (our own linear regex,
  validated with detect-secrets' JWT check).
* AWS secret access keys next to an "aws ... key" name (detect-secrets' regex; the keyword rule in
  keywords.py adds unquoted credentials-file lines).
* Whole PEM / OpenSSH / PGP / PuTTY private key blocks, including blocks truncated before their END
  line (redacted to the end of the base64 body).
* The password inside `scheme://user:PASSWORD@host`; user and host are kept.

Also the span types and small helpers that keywords.py shares. Each finder takes the text and its
lower-cased copy and yields (start, end, kind); prefilter.py runs it only where one of its anchors occurs.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from detect_secrets.filters.heuristic import is_prefixed_with_dollar_sign, is_templated_secret
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.basic_auth import RESERVED_CHARACTERS
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

Span = tuple[int, int, str]  # start, end, kind
Finder = Callable[[str, str], Iterable[Span]]  # (text, lower-cased text) -> spans

# Fewer distinct characters than this make a token-shaped match filler ("AC" + "x" * 32 in docs).
MIN_DISTINCT_IN_TOKEN = 8

_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_-]*+")


def _match_end(pattern: re.Pattern[str], text: str, position: int) -> int:
    match = pattern.match(text, position)
    return match.end() if match else position


def own_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """Compile one of our own detector regexes, with re.ASCII (see the package docstring)."""
    return re.compile(pattern, flags | re.ASCII)


def _ascii(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """Recompile a detect-secrets regex with re.ASCII (see the package docstring)."""
    return re.compile(pattern.pattern, (pattern.flags & ~re.UNICODE) | re.ASCII)


def aligned(text: str, lowered: str) -> bool:
    # str.lower() keeps offsets unless a non-ASCII character changes length when lower-cased.
    return len(lowered) == len(text)


def looks_templated(value: str) -> bool:
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


def find_rule(rule: _Rule) -> Finder:
    def find(text: str, lowered: str) -> Iterator[Span]:
        if rule.lowered is not None and aligned(text, lowered):
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


_AWS_ACCESS_KEY, _AWS_SECRET_IN_CONTEXT = (_ascii(p) for p in AWSKeyDetector.denylist)
_SLACK_TOKEN, _SLACK_WEBHOOK = (_ascii(p) for p in SlackDetector.denylist)

# The JWT regex only starts at the beginning of a token (the lookbehind right after the literal keeps
# sre's fast literal scan) and its quantifiers are possessive, so repeated "eyJ" stays linear.
_JWT = own_regex(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]*+=*+\.[A-Za-z0-9_-]++=*+(?:\.[A-Za-z0-9_+/=-]*+)?")
_SK_TOKEN = own_regex(r"sk-(?<![A-Za-z0-9_-]sk-)[A-Za-z0-9_-]{20,}+")
_OPENAI_LEGACY = _ascii(OpenAIDetector.denylist[0])


def _sk_kind(token: str) -> str | None:
    if token.startswith("sk-ant-"):
        return "anthropic_key"
    if token.startswith(("sk-proj-", "sk-svcacct-", "sk-admin-")) or _OPENAI_LEGACY.match(token):
        return "openai_key"
    return None


def find_sk_keys(text: str, lowered: str) -> Iterator[Span]:
    # Anchored `.match` on one token keeps detect-secrets' OpenAI regex linear.
    for match in _SK_TOKEN.finditer(text):
        kind = _sk_kind(match.group())
        if kind:
            yield match.start(), match.end(), kind


_DS_TWILIO_ACCOUNT, _DS_TWILIO_API_KEY = (_ascii(p) for p in TwilioKeyDetector.denylist)

# (rule, anchors over the lower-cased text, anchors over the original text); see prefilter.py's `_Detector`. An anchor
# need not be the start of the token: one that starts with a character rare in code is cheaper to scan
# for ("yj" of "eyJ", "k-" of "sk-") or shares a gate with other anchors ("pm_" of "npm_").
TOKEN_RULES: tuple[tuple[_Rule, tuple[str, ...], tuple[str, ...]], ...] = (
    (_Rule("aws_access_key", _AWS_ACCESS_KEY), (), ("A(?:KIA|SIA|BIA|CCA|3T)",)),
    (_Rule("aws_secret_key", _AWS_SECRET_IN_CONTEXT, group=1, whole_token=False), ("aws",), ()),
    *((_Rule("github_token", _ascii(p)), ("gh[pousr]_",), ()) for p in GitHubTokenDetector.denylist),
    (_Rule("github_token", own_regex(r"github_pat_[A-Za-z0-9_]{22,}")), ("github_pat_",), ()),
    *(
        (_Rule("gitlab_token", _ascii(p)), ("gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-", "gr1348941"), ())
        for p in GitLabTokenDetector.denylist
    ),
    (_Rule("slack_token", _SLACK_TOKEN), ("xox",), ()),
    (_Rule("slack_webhook", _SLACK_WEBHOOK), ("://",), ()),
    *((_Rule("stripe_key", _ascii(p)), ("k_live_",), ()) for p in StripeDetector.denylist),
    (_Rule("stripe_key", own_regex(r"[rs]k_test_[0-9a-zA-Z]{24}")), ("k_test_",), ()),
    *((_Rule("pypi_token", _ascii(p)), ("pypi-",), ()) for p in PypiTokenDetector.denylist),
    *((_Rule("sendgrid_key", _ascii(p)), (r"sg\.",), ()) for p in SendGridDetector.denylist),
    (_Rule("twilio_key", _DS_TWILIO_ACCOUNT), (), ("AC[a-z0-9]{32}",)),
    (_Rule("twilio_key", _DS_TWILIO_API_KEY), (), ("SK[a-z0-9]{32}",)),
    (_Rule("google_api_key", own_regex(r"AIza[0-9A-Za-z_-]{35}")), (), ("AIza",)),
    (_Rule("npm_token", own_regex(r"npm_[A-Za-z0-9]{36}")), ("pm_",), ()),
    (_Rule("jwt", _JWT, validate=JwtTokenDetector.is_formally_valid), ("yj",), ()),
)


# ---------------------------------------------------------------------------------------------
# Private keys.

_PEM_BEGIN = own_regex(
    r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----|---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----"
)
_PEM_END = own_regex(
    r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----|---- END SSH2 ENCRYPTED PRIVATE KEY ----"
)
# A line break inside a key: a real newline, or an escaped "\n" as in JSON or a source string,
# optionally followed by string-concatenation glue (`\n"` newline `"` or `\n' +` newline `'`).
_BREAK = r"""(?:(?:\\r)?\\n(?:["'`][ \t]*+\+?[ \t]*+\r?\n[ \t]*+\+?[ \t]*+["'`])?|\r?\n)"""
# What follows BEGIN when the END line is missing: armor headers (Proc-Type:, Version:), then base64
# lines, each of which must end at a line break or a closing quote.
_PEM_BODY = own_regex(
    rf"""(?:{_BREAK}[ \t]*+[A-Z][A-Za-z-]*+:[^\n\\"']*+)*+"""
    rf"""(?:(?:{_BREAK}[ \t]*+)++[A-Za-z0-9+/=]++(?=[ \t]*+(?:\r?\n|\\[nr]|["'`,)]|\Z)))*+"""
)
_PUTTY = own_regex(
    r"PuTTY-User-Key-File-\d+:[^\r\n]*+"
    r"(?:\r?\n(?:[A-Za-z][A-Za-z-]*+:[^\r\n]*+|[A-Za-z0-9+/=]++(?=[ \t]*+(?:\r?\n|\Z))))*+"
)


def find_private_keys(text: str, lowered: str) -> Iterator[Span]:
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
_URL_CREDENTIALS = own_regex(
    rf"""://[^{_USER_STOP}\s"'`<>]{{0,256}}+:(?P<password>[^{_PASSWORD_STOP}\s"'`<>]{{1,256}}+)@"""
)
_URL_PLACEHOLDERS = frozenset({"password", "passwd", "pass", "pwd", "passphrase", "secret", "token", "changeme"})


def _is_url_password(value: str) -> bool:
    if value.lower() in _URL_PLACEHOLDERS or len(set(value)) == 1:
        return False
    return not (looks_templated(value) or is_prefixed_with_dollar_sign(value))


def find_url_passwords(text: str, lowered: str) -> Iterator[Span]:
    for match in _URL_CREDENTIALS.finditer(text):
        if _is_url_password(match.group("password")):
            yield match.start("password"), match.end("password"), "connection_string_password"
