"""The settle tracker against the shared cases (clients/shared/settle_cases.json, also run by the TypeScript suite)
and, for random edit sequences, against a reference that replays every change on the whole text."""

import json
from pathlib import Path

import pytest
from editloop_client.settle import SettleTracker
from hypothesis import given, settings
from hypothesis import strategies as st

SHARED = json.loads((Path(__file__).parents[2] / "clients" / "shared" / "settle_cases.json").read_text())


def run(doc: str, start: int, text: str, changes: list) -> dict:
    tracker = SettleTracker()
    tracker.track("g", "doc", start, text, now=0)
    for offset, deleted, inserted in changes:
        tracker.change("doc", offset, deleted, inserted, now=1)
    region = tracker.regions["g"]
    return {"start": region.start, "text": region.text, "ended": region.ended}


@pytest.mark.parametrize("case", SHARED["cases"], ids=[c["name"] for c in SHARED["cases"]])
def test_shared_cases(case):
    got, expect = run(case["doc"], case["start"], case["text"], case["changes"]), case["expect"]
    assert (got["text"], got["ended"]) == (expect["text"], expect["ended"])
    if not expect["ended"]:
        assert got["start"] == expect["start"]


def test_shared_partial_accepts_extend_one_region():
    case = SHARED["partial"]
    tracker, doc = SettleTracker(), case["doc"]
    for offset, text in case["accepts"]:
        doc = doc[:offset] + text + doc[offset:]
        assert tracker.track("g", "doc", offset, text, now=0) == []
    for offset, deleted, inserted in case["changes"]:
        tracker.change("doc", offset, deleted, inserted, now=1)
    [settled] = tracker.settle_all()
    assert (settled.final_text, settled.original) == (case["expect"]["text"], case["expect"]["original"])


def reference(doc: str, start: int, text: str, changes: list) -> tuple[str, bool, int]:
    """Replay the changes on the whole document, each character flagged in or out of the region. A change whose
    deleted span holds every region character ends it; one that deletes some of them brings its inserted text in;
    a pure insertion is in when the characters on both sides of it are."""
    chars = [(c, start <= i < start + len(text)) for i, c in enumerate(doc)]
    ended = False
    for offset, deleted, inserted in changes:
        gone = chars[offset : offset + deleted]
        rest = chars[:offset] + chars[offset + deleted :]
        total = sum(flag for _, flag in chars)
        hit = sum(flag for _, flag in gone)
        if ended or (total and hit == total):
            ended = True
            flag = False
        elif hit:
            flag = True
        else:
            flag = 0 < offset < len(rest) and rest[offset - 1][1] and rest[offset][1]
        chars = rest[:offset] + [(c, flag) for c in inserted] + rest[offset:]
        if ended:
            chars = [(c, False) for c, _ in chars]
    positions = [i for i, (_, flag) in enumerate(chars) if flag]
    assert positions == list(range(positions[0], positions[-1] + 1)) if positions else True, "not contiguous"
    return "".join(c for c, flag in chars if flag), ended, positions[0] if positions else -1


@st.composite
def scenarios(draw):
    alphabet = st.sampled_from("ab \n")
    doc = draw(st.text(alphabet, max_size=12))
    text = draw(st.text(alphabet, min_size=1, max_size=8))
    start = draw(st.integers(0, len(doc)))
    doc = doc[:start] + text + doc[start:]
    changes, length = [], len(doc)
    for _ in range(draw(st.integers(0, 12))):
        offset = draw(st.integers(0, length))
        deleted = draw(st.integers(0, length - offset))
        inserted = draw(st.text(alphabet, max_size=4))
        changes.append([offset, deleted, inserted])
        length += len(inserted) - deleted
    return doc, start, text, changes


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_tracker_matches_a_replay_of_the_whole_text(scenario):
    doc, start, text, changes = scenario
    got = run(doc, start, text, changes)
    kept, ended, first = reference(doc, start, text, changes)
    assert (got["text"], got["ended"]) == (kept, ended)
    if not ended:
        assert got["start"] == first
        final = doc
        for offset, deleted, inserted in changes:
            final = final[:offset] + inserted + final[offset + deleted :]
        assert final[got["start"] : got["start"] + len(got["text"])] == got["text"]


def test_settles_after_quiet_time_and_on_save_or_close():
    tracker = SettleTracker(settle_s=10)
    tracker.track("a", "x.py", 0, "return 1", now=0)
    tracker.track("b", "y.py", 0, "pass", now=0)
    tracker.change("x.py", 7, 1, "2", now=5)
    tracker.change("x.py", 100, 0, "# far below", now=14)  # outside: the region is still
    assert [s.key for s in tracker.tick(now=12)] == ["b"]  # y.py: untouched since 0
    assert tracker.tick(now=14.9) == []
    [a] = tracker.tick(now=15)
    assert (a.final_text, a.changed) == ("return 2", True)
    tracker.track("c", "z.py", 3, "x", now=20)
    [c] = tracker.saved("z.py")
    assert (c.key, c.changed) == ("c", False)
    tracker.track("d", "z.py", 0, "y", now=20)
    assert [s.key for s in tracker.closed("z.py")] == ["d"] and tracker.regions == {}


def test_an_accept_elsewhere_settles_the_old_region():
    tracker = SettleTracker()
    tracker.track("g", "x.py", 0, "ab", now=0)
    [old] = tracker.track("g", "x.py", 10, "cd", now=1)
    assert old.final_text == "ab" and tracker.regions["g"].text == "cd"
    with pytest.raises(ValueError):
        tracker.track("h", "x.py", 0, "", now=0)
