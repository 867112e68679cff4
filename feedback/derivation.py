"""The rules that turn generations into training rows, in TRL's formats: edit pairs, choice pairs, KTO rows and SFT
rows. Pure: `derive` takes whole prompt groups of generations and a DatasetConfig and returns their rows and the
gates' counts; it reads no database (feedback/rows.py reads, compares and writes).

What a generation yields (from its join row and its prompt group alone, so never from the order of events):
- `edit_pair` `edit:{gid}`: prompt, chosen = the user's final text, rejected = the model's completion (edited).
- `sft` `sft:{gid}`: prompt -> the user's final text, for edits only. Accepted completions are the model's own
  output: SFT on them is self-distillation, which reinforces the model's habits and would outnumber the edits;
  their signal goes into KTO (label true) and choice pairs instead, unless `sft_accepted` is on.
- `sft` `sft:accepted:{gid}`: prompt -> the completion, for accepted generations of the upstream (the rented model,
  `model` = `upstream`) when `distill_upstream` is on: what users kept of another model's code is not our model's
  habit but what we want to learn from it (distillation).
- `sft` `sft:kept:{gid}`: prompt -> the completion, for accepted generations of our own model when `sft_accepted`
  is on: what users kept as it was, filtered by their verdict (expert iteration), beside what they edited; it holds
  the syntax that SFT on a few edited texts erodes. The edit replay leaves these rows out (trainers/execute.py): the
  model that wrote such a text replays it at distance 0, which would measure who wrote the data.
- `kto` `kto:final:{gid}`: the user's final text, label true (edited).
- `kto` `kto:completion:{gid}`: the model's completion, one row per generation (one row per text), labelled by the
  strongest signal: an explicit rating (score > 0 true, < 0 false; 0 says nothing) over the edit (false; true for
  a trivial edit) over the decision (accepted true, rejected false). A rating is the user's own verdict on this very
  text; an edit or a decision is inferred from what they did next.
- `choice_pair` `choice:{accepted}>{rejected}`: within a prompt group, an accepted completion (labelled true) over a
  rejected one (labelled false): each accepted generation with the earliest PAIRS_PER_ACCEPTED rejected ones, so a
  group yields pairs linear in its size. The row's user is the accepted generation's.
- Trivial edits are accepts in all but name: no edit pair, sft or final kto row, and the completion is labelled
  true. Trivial by meaning, not by size: an edit is trivial when it changes nothing a reader could care about, that
  is when the texts are equal once spaces at line ends, blank lines and a final line break are ignored (indentation
  and spaces inside a line count: in Python they are syntax or a convention). A two-character change that a user
  makes again and again is a team's convention, the very signal to learn. (min_edit_distance, 0 by default, also
  makes edits below it trivial, for projects that want the old size rule.) Total rewrites (distance >
  max_edit_distance) make no edit pair; the sft and final kto rows stay, and the completion is labelled false.
Rows keep their generation ids and the ids of the events behind them: the `generation` event, then the edit (edit
pairs, sft, final kto), the event that decided the label (completion kto), or each side's decision and rating
(choice pairs). `occurred_at` is the latest of those events.

Gates, counted over the generations derived. Generation gates count generations, row gates rows.
- excluded; no_prompt (feedback, but no `generation` event yet); secret_in_change (the `<secret:KIND>` placeholders
  of the final text and of the completion differ: a secret sits in the changed region): no rows at all.
- trivial_edit, total_rewrite: as above; the other rows are still made.
- broken_syntax (Python by `feedback.syntax.is_python`; when check_python_syntax): the final text parses in none of
  the lenient ways while the completion parses in one: no edit pair, sft or final kto row (the completion's kto
  row stays). Lenient, because completions are fragments: as it is, then as the body of a block, then after the
  prefix (a completion that starts mid-line), then between prefix and suffix; each tried only when the ones before
  failed. The final text is tried first, so a valid edit costs one parse.
- empty (a completion or final text shorter than min_chars once stripped), too_long (a prompt, completion or final
  text longer than max_chars): rows.
- near_duplicate: a row whose texts are each at least near_duplicate_similarity similar (rapidfuzz ratio) to those of
  a kept row of the same kind (and label) and prompt; the earliest is kept (generations in the order they were
  shown). A choice pair is one when its accepted or its rejected completion near-duplicates an earlier completion
  of the same outcome in the group: such a pair repeats a kept one.
- trivial_pair: a choice pair whose two completions differ only trivially (as a trivial edit would).
`Derived.dropped_edit_pairs` counts, per gate, the edited generations that made no edit pair because of it (the
generation gates, the row gates of the pair, and broken_syntax), so a report shows what the gates cost the
preference data.
"""

import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from feedback.config import DatasetConfig
from feedback.syntax import is_python, parses_fragment, parses_within

KINDS = ("edit_pair", "choice_pair", "kto", "sft")
GATES = (
    "excluded",
    "no_prompt",
    "secret_in_change",
    "trivial_edit",
    "total_rewrite",
    "broken_syntax",
    "empty",
    "too_long",
    "near_duplicate",
    "trivial_pair",
)
PAIRS_PER_ACCEPTED = 4
UPSTREAM = "upstream"  # the model name of the rented model's generations (serving/gateway)
# Bump when a change here changes the rows that feedback yields: the next build of each project re-derives all.
# 2: one is_python for the project (language "py"/"python3" and .pyw count; a language id beats the suffix).
# 3: accepted upstream generations make sft rows (distill_upstream).
# 4: trivial by meaning (line-end spaces and blank lines only), not by size (min_edit_distance now 0 by default).
DERIVATION_VERSION = 4
# The DatasetConfig fields the rows depend on (the others choose splits and schedules).
GATE_FIELDS = frozenset(
    {
        "min_edit_distance",
        "max_edit_distance",
        "min_chars",
        "max_chars",
        "near_duplicate_similarity",
        "check_python_syntax",
        "distill_upstream",
        "sft_accepted",
    }
)

_SECRET = re.compile(r"<secret:[^<>\s]{1,64}>")
_FEEDBACK = frozenset(("accepted", "rejected", "edited"))


class Gen(NamedTuple):
    """A generation as the rules read it: its join row, then its code. (A NamedTuple, not SQLAlchemy's Row: a build
    reads some forty attributes per generation, and a Row's cost ten times as much.) Columns typed Any may be null;
    the generation gates check them before the rows use them. `id` and `updated_at` are the reader's."""

    id: int
    generation_id: str
    outcome: str
    prompt_hash: Any
    edit_distance: float | None
    language: str | None
    file_path: str | None
    user: str | None
    model: str | None
    excluded: bool
    shown_at: datetime
    shown_event_id: Any
    decided_at: datetime
    decision_event_id: Any
    edited_at: datetime
    edited_event_id: Any
    rating_score: float | None
    rated_at: datetime
    rating_event_id: Any
    updated_at: datetime
    prompt: str | None
    messages: list[dict[str, Any]] | None
    completion: Any
    final_text: Any
    prefix: str | None
    suffix: str | None


CODE_FIELDS = ("prompt", "messages", "completion", "final_text", "prefix", "suffix")


class Derived(NamedTuple):
    rows: list[dict[str, Any]]  # the training-row columns that the rules decide, content_hash aside
    gates: Counter[str]
    syntax_s: float  # of the time `derive` took, the Python parse's (for the build's report)
    dropped_edit_pairs: Counter[str]  # per gate, the edited generations that made no edit pair because of it


def derive(gens: Iterable[Gen], config: DatasetConfig) -> Derived:
    """The rows of these generations and the gates they met. `gens` must hold whole prompt groups: choice pairs and
    near-duplicates depend on every generation of a prompt."""
    return _Rules(config).derive(gens)


def version(config: DatasetConfig) -> dict[str, Any]:
    """What the rows depend on besides the generations: a build under another version re-derives everything."""
    return {"version": DERIVATION_VERSION, **config.model_dump(mode="json", include=set(GATE_FIELDS))}


@dataclass(slots=True)
class _Plan:
    """What one generation may yield, once its generation gates passed."""

    g: Gen
    order: tuple[datetime, str]
    label: bool | None  # the completion's kto label, from the strongest signal
    signal: tuple[str, datetime] | None  # the event behind that label
    edit: str | None  # "pair" | "rewrite" | "trivial" for edits
    prompt_gate: str | None
    completion_gate: str | None
    final_gate: str | None
    broken: bool = False


class _Rules:
    def __init__(self, config: DatasetConfig) -> None:
        self.config = config
        self.cutoff = config.near_duplicate_similarity * 100
        self.gates: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def derive(self, gens: Iterable[Gen]) -> Derived:
        plans = [p for g in gens if (p := self._plan(g)) is not None]
        clock = time.perf_counter()
        self._check_syntax([p for p in plans if p.edit in ("pair", "rewrite") and p.final_gate is None])
        syntax_s = time.perf_counter() - clock
        groups: dict[str, list[_Plan]] = defaultdict(list)
        for p in plans:
            groups[p.g.prompt_hash].append(p)
        rows: list[dict[str, Any]] = []
        for group in groups.values():
            group.sort(key=lambda p: p.order)
            rows += self._group_rows(group)
        return Derived(rows, self.gates, syntax_s, self.dropped)

    # -- generation gates ------------------------------------------------------------------------------------------

    def _text_gate(self, value: str) -> str | None:
        size = len(value)
        if size > self.config.max_chars:
            return "too_long"
        if size < self.config.min_chars:
            return "empty"
        if self.config.min_chars == 1:  # the default: blank, without the copy that strip makes
            return "empty" if value.isspace() else None
        return "empty" if len(value.strip()) < self.config.min_chars else None

    def _plan(self, g: Gen) -> _Plan | None:
        """The generation gates, cheapest first, and what the generation may yield."""
        score = g.rating_score
        if g.outcome not in _FEEDBACK and not score:
            return None  # shown, or rated 0: no verdict, nothing to learn and nothing to count
        config = self.config
        completion, final = g.completion, g.final_text
        edited = g.outcome == "edited" and final is not None
        if g.excluded:
            self._count("excluded", edited)
            return None
        if g.prompt_hash is None or completion is None or g.shown_event_id is None:
            self._count("no_prompt", edited)
            return None
        if (
            final is not None
            and ("<secret:" in final or "<secret:" in completion)
            and Counter(_SECRET.findall(final)) != Counter(_SECRET.findall(completion))
        ):
            self._count("secret_in_change", edited)
            return None
        edit = None
        if edited:
            distance = g.edit_distance
            if distance is None:
                distance = Levenshtein.normalized_distance(completion, final)
            if distance < config.min_edit_distance or trivial_change(completion, final):
                edit = "trivial"
                self._count("trivial_edit", True)
            elif distance > config.max_edit_distance:
                edit = "rewrite"
                self._count("total_rewrite", True)
            else:
                edit = "pair"
        label: bool | None
        if score:
            label, signal = score > 0, (g.rating_event_id, g.rated_at)
        elif edit is not None:
            label, signal = edit == "trivial", (g.edited_event_id, g.edited_at)
        elif g.outcome in ("accepted", "rejected"):
            label, signal = g.outcome == "accepted", (g.decision_event_id, g.decided_at)
        else:
            label, signal = None, None
        if g.prompt is not None:
            prompt_chars = len(g.prompt)
        else:
            prompt_chars = sum(len(str(m.get("content") or "")) for m in g.messages or ())
        return _Plan(
            g=g,
            order=(g.shown_at, g.generation_id),
            label=label,
            signal=signal,
            edit=edit,
            prompt_gate="too_long" if prompt_chars > config.max_chars else None,
            completion_gate=self._text_gate(completion),
            final_gate=self._text_gate(final) if edit in ("pair", "rewrite") else None,
        )

    def _check_syntax(self, plans: list[_Plan]) -> None:
        """Flag Python edits whose final text broke syntax that the completion had right."""
        if not self.config.check_python_syntax:
            return
        for p in plans:
            g = p.g
            if not is_python(g.language, g.file_path) or parses_fragment(g.final_text):
                continue
            if parses_within(g.final_text, g.prefix, g.suffix):
                continue
            if parses_fragment(g.completion) or parses_within(g.completion, g.prefix, g.suffix):
                p.broken = True
                self._count("broken_syntax", p.edit == "pair")

    def _count(self, gate: str, edit_pair: bool) -> None:
        """A generation gate met; `edit_pair`: it cost the generation its edit pair."""
        self.gates[gate] += 1
        if edit_pair:
            self.dropped[gate] += 1

    # -- rows of a prompt group ------------------------------------------------------------------------------------

    def _group_rows(self, group: list[_Plan]) -> list[dict[str, Any]]:
        """The rows of one prompt group, earliest generation first."""
        gates, cutoff = self.gates, self.cutoff
        kept: dict[tuple[str, bool | None], list[str]] = defaultdict(list)
        kept_chosen: list[str] = []
        kept_rejected: list[str] = []

        def fresh(bucket: tuple[str, bool | None], value: str) -> bool:
            texts = kept[bucket]
            if texts and process.extractOne(value, texts, scorer=fuzz.ratio, score_cutoff=cutoff) is not None:
                gates["near_duplicate"] += 1
                return False
            texts.append(value)
            return True

        def fresh_pair(chosen: str, rejected: str) -> bool:
            if kept_chosen:
                for _, _, i in process.extract_iter(chosen, kept_chosen, scorer=fuzz.ratio, score_cutoff=cutoff):
                    if fuzz.ratio(rejected, kept_rejected[i], score_cutoff=cutoff):
                        gates["near_duplicate"] += 1
                        return False
            kept_chosen.append(chosen)
            kept_rejected.append(rejected)
            return True

        rows: list[dict[str, Any]] = []
        accepted: list[_Plan] = []
        rejected: list[_Plan] = []
        for p in group:
            g = p.g
            gid, completion, final = g.generation_id, g.completion, g.final_text
            if p.edit in ("pair", "rewrite") and not p.broken:
                edited = _events((g.shown_event_id, g.shown_at), (g.edited_event_id, g.edited_at))
                if p.edit == "pair":
                    gate = p.prompt_gate or p.final_gate or p.completion_gate
                    if gate:
                        gates[gate] += 1
                        self.dropped[gate] += 1
                    elif fresh_pair(final, completion):
                        rows.append(_row("edit_pair", f"edit:{gid}", g, edited, chosen=final, rejected=completion))
                    else:
                        self.dropped["near_duplicate"] += 1
                gate = p.prompt_gate or p.final_gate
                if gate:
                    gates[gate] += 2  # the final kto row and the sft row
                else:
                    if fresh(("kto", True), final):
                        rows.append(_row("kto", f"kto:final:{gid}", g, edited, completion=final, label=True))
                    if fresh(("sft", None), final):
                        rows.append(_row("sft", f"sft:{gid}", g, edited, completion=final))
            if p.label is None or p.signal is None:
                continue
            gate = p.prompt_gate or p.completion_gate
            if gate:
                gates[gate] += 1
                continue
            events = _events((g.shown_event_id, g.shown_at), p.signal)
            if fresh(("kto", p.label), completion):
                rows.append(_row("kto", f"kto:completion:{gid}", g, events, completion=completion, label=p.label))
            if g.outcome == "accepted" and p.label:
                accepted.append(p)
                if g.model == UPSTREAM:
                    key = f"sft:accepted:{gid}" if self.config.distill_upstream else None
                else:
                    key = f"sft:kept:{gid}" if self.config.sft_accepted else None
                if key is not None and fresh(("sft", None), completion):
                    rows.append(_row("sft", key, g, events, completion=completion))
            elif g.outcome == "rejected" and not p.label:
                rejected.append(p)
        if accepted and rejected:
            rows += self._choice_pairs(accepted, rejected)
        return rows

    def _choice_pairs(self, accepted: list[_Plan], rejected: list[_Plan]) -> list[dict[str, Any]]:
        """Each accepted generation over the earliest PAIRS_PER_ACCEPTED rejected ones that differ from it more than
        trivially. A completion that near-duplicates an earlier one of its outcome makes near-duplicate pairs."""
        gates, min_distance = self.gates, self.config.min_edit_distance
        distinct_accepted = self._distinct([p.g.completion for p in accepted])
        distinct_rejected = self._distinct([p.g.completion for p in rejected])
        rows: list[dict[str, Any]] = []
        for a, a_distinct in zip(accepted, distinct_accepted, strict=True):
            made = 0
            for r, r_distinct in zip(rejected, distinct_rejected, strict=True):
                if made == PAIRS_PER_ACCEPTED:
                    break
                chosen, other = a.g.completion, r.g.completion
                distance = Levenshtein.normalized_distance(chosen, other, score_cutoff=min_distance)
                if distance < min_distance or trivial_change(chosen, other):
                    gates["trivial_pair"] += 1
                    continue
                made += 1
                if not (a_distinct and r_distinct):
                    gates["near_duplicate"] += 1
                    continue
                events = _events(*_decision_events(a.g), *_decision_events(r.g))
                key = f"choice:{a.g.generation_id}>{r.g.generation_id}"
                rows.append(_row("choice_pair", key, a.g, events, chosen=chosen, rejected=other, also=r.g))
        return rows

    def _distinct(self, texts: list[str]) -> list[bool]:
        """For each text, whether it is no near-duplicate of an earlier distinct one."""
        kept: list[str] = []
        flags = []
        for value in texts:
            dup = bool(kept) and process.extractOne(value, kept, scorer=fuzz.ratio, score_cutoff=self.cutoff)
            if not dup:
                kept.append(value)
            flags.append(not dup)
        return flags


def _row(
    kind: str,
    key: str,
    g: Gen,
    events: tuple[list[str], datetime],
    *,
    chosen: str | None = None,
    rejected: str | None = None,
    completion: str | None = None,
    label: bool | None = None,
    also: Gen | None = None,
) -> dict[str, Any]:
    """A row of generation `g` (and, for a choice pair, of the `also` generation). Its texts are the generations'
    own string objects, so a writer can hash each once by identity."""
    return {
        "kind": kind,
        "source_key": key,
        "prompt": g.prompt,
        "messages": g.messages,
        "prompt_hash": g.prompt_hash,
        "chosen": chosen,
        "rejected": rejected,
        "completion": completion,
        "label": label,
        "user": g.user,
        "occurred_at": events[1],
        "generation_ids": [g.generation_id] if also is None else [g.generation_id, also.generation_id],
        "event_ids": events[0],
    }


def _events(*events: tuple[str, datetime]) -> tuple[list[str], datetime]:
    """The ids of the events behind a row, and when the latest of them happened. (Rows of one generation share
    the list: nothing changes it.)"""
    ids, latest = [], events[0][1]
    for event_id, at in events:
        ids.append(event_id)
        if at > latest:
            latest = at
    return ids, latest


def _decision_events(g: Gen) -> list[tuple[str, datetime]]:
    events = [(g.shown_event_id, g.shown_at), (g.decision_event_id, g.decided_at)]
    if g.rating_score:
        events.append((g.rating_event_id, g.rated_at))
    return events


def trivial_change(a: str, b: str) -> bool:
    """Whether the texts differ in nothing a reader could care about: spaces at line ends, blank lines, a final line
    break. Indentation and spaces inside a line count (syntax in Python; a formatting convention elsewhere). Counting
    first: most edits change how much is not space, and counting copies nothing."""
    if a == b:
        return True
    if _not_space(a) != _not_space(b):
        return False
    return _meaningful_lines(a) == _meaningful_lines(b)


def _meaningful_lines(text: str) -> list[str]:
    return [stripped for line in text.splitlines() if (stripped := line.rstrip())]


def _not_space(text: str) -> int:
    return len(text) - text.count(" ") - text.count("\n") - text.count("\t") - text.count("\r")
