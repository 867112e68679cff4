"""The prefilter, and the driver that runs the detectors it lets through.

Why the prefilter: the collector scrubs every event and almost no text contains a secret, so the
cost that matters is the clean path. Each detector declares anchors: regex fragments, one of which
occurs (in the lower-cased text, or for a few case-sensitive formats in the original) wherever the
detector can match. Each anchor starts with a few literal strings (`gh[pousr]_`: five of them); all
of them go into one Aho-Corasick automaton per haystack (ahocorasick-rs), which finds every
occurrence of every literal in one pass; an anchor that is more than its literals is then matched in
full where one occurs. Clean text costs one str.lower() and two such passes (sre needed ten scans,
one per first character, for the same answer, and measured slower: benchmarks/README.md); a detector
runs only when one of its own anchors occurs.
"""

from __future__ import annotations

import bisect
import re
import re._constants as sre_constants
import re._parser as sre_parser
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ahocorasick_rs

from feedback.scrub.keywords import KEYWORD_HEADS, find_keyword
from feedback.scrub.shapes import (
    TOKEN_RULES,
    Finder,
    Span,
    find_private_keys,
    find_rule,
    find_sk_keys,
    find_url_passwords,
)


@dataclass(frozen=True, slots=True)
class _Detector:
    name: str
    find: Finder
    # Regex fragments, each starting with a literal character, over the lower-cased text (`anchors`)
    # and over the original text (`exact_anchors`, for case-sensitive formats that start with a
    # character that is rare in code). Whenever `find` can return a span, one of them matches.
    anchors: tuple[str, ...] = ()
    exact_anchors: tuple[str, ...] = ()


# In priority order: where spans overlap, the earlier detector's span wins.
_DETECTORS = (
    _Detector("private_key", find_private_keys, ("private key", "putty-user-key")),
    *(
        _Detector(f"{rule.kind}_{index}", find_rule(rule), anchors, exact)
        for index, (rule, anchors, exact) in enumerate(TOKEN_RULES)
    ),
    _Detector("openai_anthropic", find_sk_keys, ("k-",)),
    _Detector("url_password", find_url_passwords, ("://",)),
    *(_Detector(f"keyword_{name}", find_keyword(head), (head,)) for name, head in KEYWORD_HEADS.items()),
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


def _placeholder(kind: str) -> str:
    return f"<secret:{kind}>"


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
