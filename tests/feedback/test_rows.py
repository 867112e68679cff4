"""Tests for feedback.rows: each kind of row, each gate, incremental builds and their report, on both backends.

Inputs go through feedback.service.ingest, as the collector's would. The rules alone, without a database, are
tested in test_derivation.py; the Python checks in test_syntax.py."""

import gc
import threading
import uuid
from datetime import timedelta
from typing import Any, Literal

import pytest
from sqlalchemy import select, update

from core.db import session_scope, utcnow
from core.errors import NotFound
from core.projects import Project, create_project
from core.settings import Settings
from feedback import rows as rows_module
from feedback import syntax
from feedback.derivation import PAIRS_PER_ACCEPTED
from feedback.models import DatasetBuild, Generation, TrainingRow
from feedback.rows import GATES, KINDS, OVERLAP, _Build, _config, _gen, _select, build_rows
from feedback.service import ingest
from tests.factories import feedback, generation

BODY = "    total = 0\n    for x in items:\n        total += x\n    return total\n"
EDITED = "    total = 0\n    for x in items:\n        if x > 0:\n            total += x\n    return total\n"
PROMPT = "def total(items):\n"


def new_project(db_url: str, excluded_paths: list[str] | None = None, **dataset: Any) -> int:
    with session_scope(db_url) as session:
        project = create_project(session, f"rows-{uuid.uuid4().hex[:10]}", excluded_paths)
        if dataset:
            project.settings = {"dataset": dataset}
        session.flush()
        return project.id


def send(
    db_url: str, project_id: int, events: list[dict[str, Any]], fold: Literal["inline", "deferred"] = "inline"
) -> None:
    """Ingest events. Folded inline by default: these tests move generations' updated_at (`age`) and ingest during
    builds; `fold="deferred"` leaves them queued for the build to fold (feedback/fold.py)."""
    with session_scope(db_url) as session:
        result = ingest(session, project_id, events, Settings(ingest_fold=fold))
    assert not result.errors, result.errors


def build(db_url: str, project_id: int, **kwargs: Any) -> DatasetBuild:
    with session_scope(db_url) as session:
        return build_rows(session, project_id, **kwargs)


def age(db_url: str, project_id: int, seconds: float, *gids: str) -> None:
    """Move generations' updated_at back, out of the next build's overlap (all of the project's by default)."""
    query = select(Generation).where(Generation.project_id == project_id)
    if gids:
        query = query.where(Generation.generation_id.in_(gids))
    with session_scope(db_url) as session:
        for g in session.scalars(query):
            g.updated_at -= timedelta(seconds=seconds)


def rows(db_url: str, project_id: int, active: bool | None = True) -> dict[str, dict[str, Any]]:
    """source_key -> row (without ids and build times, which differ between projects and builds)."""
    query = select(TrainingRow.__table__).where(TrainingRow.project_id == project_id)
    if active is not None:
        query = query.where(TrainingRow.active.is_(active))
    with session_scope(db_url) as session:
        found = [dict(r) for r in session.execute(query).mappings()]
    for r in found:
        for name in ("id", "project_id", "built_at"):
            del r[name]
    return {r["source_key"]: r for r in found}


def edit(gid: str, t: float = 0, completion: str = BODY, final: str = EDITED, **fields: Any) -> list[dict[str, Any]]:
    fields = {"prompt": PROMPT, "language": "python", **fields}
    return [generation(gid, t, completion=completion, **fields), feedback(gid, "edited", t + 5, final_text=final)]


def decided(gid: str, kind: str, t: float = 0, completion: str = BODY, **fields: Any) -> list[dict[str, Any]]:
    fields = {"prompt": PROMPT, **fields}
    return [generation(gid, t, completion=completion, **fields), feedback(gid, kind, t + 2)]


def variant(n: int) -> str:
    """Completions of one prompt that are no near-duplicates of each other."""
    names = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    return f"    {names[n]}_{n} = [{n} * {n + 3}]\n    return sum({names[n]}_{n}) - {n * 7}\n"


# -- the kinds of row --------------------------------------------------------------------------------------------


def test_an_edit_makes_an_edit_pair_sft_and_kto_rows_with_their_events(db_url):
    p = new_project(db_url)
    send(db_url, p, edit("g1", 0))
    result = build(db_url, p)

    got = rows(db_url, p)
    assert set(got) == {"edit:g1", "sft:g1", "kto:final:g1", "kto:completion:g1"}
    pair = got["edit:g1"]
    assert (pair["kind"], pair["prompt"], pair["chosen"], pair["rejected"]) == ("edit_pair", PROMPT, EDITED, BODY)
    assert (got["sft:g1"]["kind"], got["sft:g1"]["completion"]) == ("sft", EDITED)
    assert (got["kto:final:g1"]["completion"], got["kto:final:g1"]["label"]) == (EDITED, True)
    assert (got["kto:completion:g1"]["completion"], got["kto:completion:g1"]["label"]) == (BODY, False)
    for r in got.values():
        assert r["generation_ids"] == ["g1"] and r["event_ids"] == ["g1:gen", "g1:edited"]
        assert r["occurred_at"].isoformat().startswith("2026-11-01T12:00:05")
    assert (result.rows_added, result.rows_changed, result.rows_removed) == (4, 0, 0)
    assert result.report["rows"] == {"edit_pair": 1, "choice_pair": 0, "kto": 2, "sft": 1}


def test_an_accepted_and_a_rejected_completion_of_a_prompt_make_a_choice_pair(db_url):
    p = new_project(db_url)
    send(db_url, p, decided("good", "accepted", 0, variant(0)) + decided("bad", "rejected", 1, variant(1)))
    send(db_url, p, decided("other", "rejected", 2, variant(2), prompt="def unrelated():\n"))
    build(db_url, p)

    got = rows(db_url, p)
    assert {k for k, r in got.items() if r["kind"] == "choice_pair"} == {"choice:good>bad"}
    pair = got["choice:good>bad"]
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (PROMPT, variant(0), variant(1))
    assert pair["generation_ids"] == ["good", "bad"]
    assert pair["event_ids"] == ["good:gen", "good:accepted", "bad:gen", "bad:rejected"]
    # No SFT from accepted completions: only edits teach the user's own code.
    assert not any(r["kind"] == "sft" for r in got.values())


def test_sft_accepted_makes_sft_rows_of_accepted_code_and_turning_it_off_removes_them(db_url):
    p = new_project(db_url, sft_accepted=True)
    send(db_url, p, decided("good", "accepted", 0, variant(0)) + decided("bad", "rejected", 1, variant(1)))
    send(db_url, p, edit("g", 2, prompt="def other():\n"))
    build(db_url, p)
    got = rows(db_url, p)
    assert {k: r["completion"] for k, r in got.items() if r["kind"] == "sft"} == {
        "sft:kept:good": variant(0),
        "sft:g": EDITED,
    }
    assert got["sft:kept:good"]["event_ids"] == ["good:gen", "good:accepted"]
    with session_scope(db_url) as session:
        session.get(Project, p).settings = {"dataset": {"sft_accepted": False}}
    result = build(db_url, p)
    assert {k for k, r in rows(db_url, p).items() if r["kind"] == "sft"} == {"sft:g"}
    assert "sft:kept:good" in rows(db_url, p, active=False) and result.rows_removed == 1


def test_choice_pairs_are_capped_per_accepted_generation(db_url):
    p = new_project(db_url)
    events = decided("a", "accepted", 0, variant(0))
    for n in range(1, 7):
        events += decided(f"r{n}", "rejected", n, variant(n))
    send(db_url, p, events)
    build(db_url, p)
    pairs = sorted(k for k, r in rows(db_url, p).items() if r["kind"] == "choice_pair")
    assert pairs == [f"choice:a>r{n}" for n in range(1, PAIRS_PER_ACCEPTED + 1)]  # the earliest rejected ones


def test_kto_labels_come_from_the_strongest_signal(db_url):
    p = new_project(db_url)
    send(db_url, p, decided("acc", "accepted", 0, variant(0), prompt="def a():\n"))
    send(db_url, p, decided("rej", "rejected", 0, variant(1), prompt="def b():\n"))
    send(db_url, p, [generation("up", 0, prompt="def c():\n"), feedback("up", "rating", 3, score=1.0)])
    send(db_url, p, [generation("flat", 0, prompt="def d():\n"), feedback("flat", "rating", 3, score=0.0)])
    # Accepted, then rated down: the rating is the user's verdict on this very text.
    events = decided("acc-down", "accepted", 0, variant(2), prompt="def e():\n")
    send(db_url, p, [*events, feedback("acc-down", "rating", 9, score=-0.5)])
    build(db_url, p)

    got = rows(db_url, p)
    labels = {k.removeprefix("kto:completion:"): r["label"] for k, r in got.items() if r["kind"] == "kto"}
    assert labels == {"acc": True, "rej": False, "up": True, "acc-down": False}
    assert got["kto:completion:up"]["event_ids"] == ["up:gen", "up:rating"]
    assert got["kto:completion:acc-down"]["event_ids"] == ["acc-down:gen", "acc-down:rating"]
    assert got["kto:completion:acc"]["event_ids"] == ["acc:gen", "acc:accepted"]


def test_texts_survive_the_write_exactly(db_url):
    tricky = '    s = "a, \\"b\\"" + \'\\\\n\' + "\\t"  # é ✓ ""\r\n    return s, None\n'
    final = tricky + "    # NULL \\N ,,\n"
    chat = [{"role": "system", "content": 'Say "hi", then \\N'}, {"role": "user", "content": "def f():\n"}]
    gid = 'g,"1"'
    p = new_project(db_url)
    send(db_url, p, [generation(gid, 0, prompt=None, messages=chat, completion=tricky, user='o"neil, jr')])
    send(db_url, p, [feedback(gid, "edited", 5, final_text=final)])
    build(db_url, p)
    pair = rows(db_url, p)[f"edit:{gid}"]
    assert (pair["chosen"], pair["rejected"], pair["prompt"], pair["messages"]) == (final, tricky, None, chat)
    assert (pair["user"], pair["generation_ids"], pair["event_ids"]) == (
        'o"neil, jr',
        [gid],
        [f"{gid}:gen", f"{gid}:edited"],
    )


# -- the gates ---------------------------------------------------------------------------------------------------


def gates(result: DatasetBuild) -> dict[str, int]:
    assert set(result.report["gates"]) == set(GATES)
    return {k: v for k, v in result.report["gates"].items() if v}


def test_whitespace_only_edit_is_trivial_its_completion_counts_as_accepted(db_url):
    p = new_project(db_url)
    send(db_url, p, edit("g1", final=BODY.replace("    return", "\n    return") + "  \n"))
    result = build(db_url, p)
    assert gates(result) == {"trivial_edit": 1}
    assert {k: r["label"] for k, r in rows(db_url, p).items()} == {"kto:completion:g1": True}


def test_an_edit_below_min_edit_distance_is_trivial(db_url):
    small = BODY.replace("total = 0", "total = 100")
    p = new_project(db_url, min_edit_distance=0.2)
    send(db_url, p, edit("g1", final=small))
    assert gates(build(db_url, p)) == {"trivial_edit": 1}
    assert set(rows(db_url, p)) == {"kto:completion:g1"}
    q = new_project(db_url)  # the default threshold lets the same edit through
    send(db_url, q, edit("g1", final=small))
    assert not gates(build(db_url, q)) and "edit:g1" in rows(db_url, q)


def test_a_total_rewrite_makes_no_edit_pair_but_keeps_sft(db_url):
    p = new_project(db_url, max_edit_distance=0.3)
    send(db_url, p, edit("g1", final="    return sum(items)\n"))
    assert gates(build(db_url, p)) == {"total_rewrite": 1}
    got = rows(db_url, p)
    assert set(got) == {"sft:g1", "kto:final:g1", "kto:completion:g1"}
    assert got["kto:completion:g1"]["label"] is False


def test_near_duplicates_of_a_prompt_keep_the_earliest(db_url):
    p = new_project(db_url)
    # Shown later but sent first: "earliest" is by when it was shown, not by arrival.
    send(db_url, p, edit("late", 10, final=EDITED + "\n"))
    send(db_url, p, edit("early", 0))
    send(db_url, p, edit("elsewhere", 0, prompt="def other(items):\n"))
    result = build(db_url, p)
    got = rows(db_url, p)
    assert {"edit:early", "sft:early", "kto:final:early", "kto:completion:early"} <= set(got)
    assert not any(k.endswith(":late") for k in got)  # all four of its rows repeat the earlier ones
    assert "edit:elsewhere" in got  # another prompt: no duplicate
    assert gates(result) == {"near_duplicate": 4}


def test_too_long_and_empty_texts_are_dropped(db_url):
    p = new_project(db_url, max_chars=80)
    send(db_url, p, edit("long", 0))  # EDITED is longer than 80 characters, BODY is not
    send(db_url, p, edit("blank", 0, prompt="def blank():\n", final="  \n"))
    result = build(db_url, p)
    got = rows(db_url, p)
    assert "edit:long" not in got and "sft:long" not in got and "kto:final:long" not in got
    assert "kto:completion:long" in got
    assert set(k for k in got if k.endswith(":blank")) == {"kto:completion:blank"}
    # long: edit pair, final kto, sft; blank (a total rewrite into nothing): final kto, sft.
    assert gates(result) == {"too_long": 3, "empty": 2, "total_rewrite": 1}


def test_min_chars_counts_what_is_left_once_stripped(db_url):
    p = new_project(db_url, min_chars=3)
    send(db_url, p, edit("short", 0, final="  ab \n"))  # 2 characters once stripped: empty
    send(db_url, p, edit("kept", 0, prompt="def kept():\n", final="  abc\n"))
    result = build(db_url, p)
    got = rows(db_url, p)
    assert set(k for k in got if k.endswith(":short")) == {"kto:completion:short"}
    assert {"sft:kept", "kto:final:kept"} <= set(got)
    assert gates(result) == {"empty": 2, "total_rewrite": 2}


def test_python_edit_that_breaks_syntax_is_flagged_and_left_out(db_url):
    broken = EDITED.replace("if x > 0:", "if x > 0")
    p = new_project(db_url)
    send(db_url, p, edit("py", 0, final=broken))
    send(db_url, p, edit("js", 0, final=broken, prompt="function total(items) {\n", language="javascript"))
    send(db_url, p, edit("by-path", 0, final=broken, prompt="# x\n", language=None, file_path="src/Total.PY"))
    result = build(db_url, p)
    got = rows(db_url, p)
    assert gates(result) == {"broken_syntax": 2}
    for gid in ("py", "by-path"):
        assert {k for k in got if k.endswith(f":{gid}")} == {f"kto:completion:{gid}"}
    assert {"edit:js", "sft:js", "kto:final:js"} <= set(got)  # not Python: not checked


def test_syntax_check_is_lenient_with_fragments_and_can_be_turned_off(db_url):
    # A completion that starts mid-line parses only after its prefix; so does the edit.
    mid_line = {"prefix": "result = compute(\n", "completion": "    items, 2)\n"}
    p = new_project(db_url)
    send(db_url, p, edit("mid", 0, final="    items, 3, strict=True)\n", **mid_line))
    send(db_url, p, edit("off", 0, final="    items, 3, strict=True\n", prompt="def x():\n", **mid_line))
    result = build(db_url, p)
    assert gates(result) == {"broken_syntax": 1}
    assert "edit:mid" in rows(db_url, p) and "edit:off" not in rows(db_url, p)

    q = new_project(db_url, check_python_syntax=False)
    send(db_url, q, edit("off", 0, final="    items, 3, strict=True\n", prompt="def x():\n", **mid_line))
    assert not gates(build(db_url, q)) and "edit:off" in rows(db_url, q)


def test_excluded_generations_make_no_rows(db_url):
    p = new_project(db_url, excluded_paths=["*.secret.py"])
    send(db_url, p, edit("hidden", 0, file_path="conf/keys.secret.py"))
    send(db_url, p, edit("shown", 0, prompt="def y():\n", file_path="conf/keys.py"))
    result = build(db_url, p)
    assert gates(result) == {"excluded": 1}
    assert not any(k.endswith(":hidden") for k in rows(db_url, p))


def test_a_secret_in_the_changed_region_leaves_the_generation_out(db_url):
    with_secret = "    password = 'hunter2hunter2Xq9'\n" + BODY
    p = new_project(db_url)
    send(db_url, p, edit("added", 0, final=with_secret))  # the user typed a secret into the edit
    send(db_url, p, edit("kept", 0, prompt="def z():\n", completion=with_secret, final=with_secret + "\n# ok\n"))
    result = build(db_url, p)
    got = rows(db_url, p)
    assert gates(result) == {"secret_in_change": 1}
    assert not any(k.endswith(":added") for k in got)
    assert "<secret:password>" in got["edit:kept"]["chosen"]  # the secret sits outside the change: kept


def test_feedback_without_its_generation_event_makes_no_rows(db_url):
    p = new_project(db_url)
    send(db_url, p, [feedback("orphan", "edited", 5, final_text=EDITED)])
    result = build(db_url, p)
    assert gates(result) == {"no_prompt": 1} and rows(db_url, p) == {}
    send(db_url, p, [generation("orphan", 0, prompt=PROMPT, completion=BODY, language="python")])
    assert build(db_url, p).rows_added == 4  # it arrives: the rows follow


def test_a_choice_pair_of_the_same_text_is_trivial(db_url):
    p = new_project(db_url)
    send(db_url, p, decided("a", "accepted", 0, BODY) + decided("r", "rejected", 1, BODY + "\n"))
    result = build(db_url, p)
    assert gates(result) == {"trivial_pair": 1}
    assert not any(r["kind"] == "choice_pair" for r in rows(db_url, p).values())


# -- incremental builds ------------------------------------------------------------------------------------------


def test_a_second_build_without_new_feedback_changes_nothing(db_url):
    p = new_project(db_url)
    send(db_url, p, edit("e", 0) + decided("a", "accepted", 0, variant(0)) + decided("r", "rejected", 1, variant(1)))
    first = build(db_url, p)
    before = rows(db_url, p, active=None)
    second = build(db_url, p)
    assert first.rows_added == len(before) == 7
    assert (second.rows_added, second.rows_changed, second.rows_removed) == (0, 0, 0)
    assert second.watermark == first.watermark
    assert rows(db_url, p, active=None) == before
    with session_scope(db_url) as session:  # not even rewritten
        assert session.scalars(select(TrainingRow.built_at).where(TrainingRow.project_id == p)).all() == [
            first.started_at
        ] * len(before)


def test_a_new_edit_of_an_old_generation_changes_exactly_its_rows(db_url):
    p = new_project(db_url)
    send(db_url, p, decided("a", "accepted", 0, variant(0)) + decided("r", "rejected", 1, variant(1)))
    send(db_url, p, edit("other", 0, prompt="def other(items):\n"))
    first = build(db_url, p)
    assert set(rows(db_url, p)) >= {"choice:a>r", "kto:completion:a"}

    send(db_url, p, [feedback("a", "edited", 50, final_text=variant(0) + "    # reviewed\n    log(alpha_0)\n")])
    second = build(db_url, p)
    # a's completion is now labelled false (changed); it is no longer accepted, so its pair goes (removed); its
    # edit makes an edit pair, an sft row and a final kto row (added). Nothing else moves.
    assert (second.rows_added, second.rows_changed, second.rows_removed) == (3, 1, 1)
    assert second.report["added"] == {"edit_pair": 1, "choice_pair": 0, "kto": 1, "sft": 1}
    assert second.report["removed"] == {"edit_pair": 0, "choice_pair": 1, "kto": 0, "sft": 0}
    all_rows = rows(db_url, p, active=None)
    assert all_rows["choice:a>r"]["active"] is False
    assert all_rows["kto:completion:a"]["label"] is False
    assert all_rows["kto:completion:a"]["event_ids"] == ["a:gen", "a:edited"]
    assert first.rows_added == 7 and len(all_rows) == 10  # nothing was deleted


def test_an_edit_that_turns_trivial_removes_the_rows_it_made(db_url):
    p = new_project(db_url)
    send(db_url, p, edit("g", 0))
    build(db_url, p)
    send(db_url, p, [feedback("g", "edited", 60, suffix="-2", final_text=BODY + "\n")])
    second = build(db_url, p)
    assert (second.rows_added, second.rows_changed, second.rows_removed) == (0, 1, 3)
    assert set(rows(db_url, p)) == {"kto:completion:g"}
    assert rows(db_url, p, active=False).keys() == {"edit:g", "sft:g", "kto:final:g"}


def test_duplicate_and_out_of_order_events_give_the_same_rows(db_url):
    events = (
        edit("e1", 0)
        + edit("e2", 3, final=EDITED.replace("x > 0", "x >= 1"), prompt="def two(items):\n")
        + decided("a", "accepted", 0, variant(0))
        + decided("r", "rejected", 1, variant(1))
        + [feedback("a", "rating", 8, score=1.0), feedback("e1", "edited", 9, suffix="-late", final_text=EDITED + "\n")]
    )
    ordered, shuffled = new_project(db_url), new_project(db_url)
    send(db_url, ordered, events)
    send(db_url, shuffled, list(reversed(events))[:5])
    build(db_url, shuffled)  # a build in between, from half the events
    send(db_url, shuffled, events + list(reversed(events)))
    build(db_url, ordered)
    build(db_url, shuffled)

    assert rows(db_url, ordered) == rows(db_url, shuffled)  # content hashes and event ids included
    assert rows(db_url, ordered)["kto:final:e1"]["event_ids"] == ["e1:gen", "e1:edited-late"]


def test_small_batches_give_the_same_rows_as_one_batch(db_url):
    events = edit("e", 0) + edit("e-dup", 1, final=EDITED + "\n")
    for n in range(5):
        events += decided(f"g{n}", "accepted" if n % 2 else "rejected", n, variant(n))
    one, paged = new_project(db_url), new_project(db_url)
    for project in (one, paged):
        for event in events:  # one ingest per event: each generation gets its own updated_at
            send(db_url, project, [event])
    build(db_url, one)
    result = build(db_url, paged, batch_size=1)
    assert result.generations_read == 7
    assert rows(db_url, one) == rows(db_url, paged)


def test_a_generation_changed_before_the_watermark_is_still_read(db_url):
    """An ingest transaction may commit after a build read, with an updated_at before that build's watermark."""
    p = new_project(db_url)
    send(db_url, p, edit("early", 0))
    first = build(db_url, p)
    send(db_url, p, decided("late", "accepted", 0, variant(3), prompt="def late():\n"))
    with session_scope(db_url) as session:
        session.execute(
            update(Generation)
            .where(Generation.project_id == p, Generation.generation_id == "late")
            .values(updated_at=first.watermark - OVERLAP / 2)
        )
    assert build(db_url, p).rows_added == 1
    assert "kto:completion:late" in rows(db_url, p)


def test_new_gates_rebuild_every_row(db_url):
    p = new_project(db_url)
    send(db_url, p, edit("g", 0))
    age(db_url, p, 3600)  # far behind the watermark that the next generation sets: out of the overlap
    send(db_url, p, decided("anchor", "accepted", 0, variant(0), prompt="def anchor():\n"))
    build(db_url, p)
    with session_scope(db_url) as session:
        session.get(Project, p).settings = {"dataset": {"max_chars": 80}}
    result = build(db_url, p)
    assert result.generations_read == 2 and result.rows_removed == 3
    assert {k for k in rows(db_url, p) if k.endswith(":g")} == {"kto:completion:g"}


def test_a_generation_that_leaves_its_prompt_group_rebuilds_the_group(db_url):
    p = new_project(db_url)
    send(db_url, p, decided("first", "accepted", 0, variant(0)) + decided("second", "accepted", 5, variant(0)))
    age(db_url, p, 3600)  # out of the next build's overlap: only their group can bring second back
    send(db_url, p, decided("anchor", "accepted", 0, variant(1), prompt="def anchor():\n"))
    build(db_url, p)
    assert "kto:completion:second" not in rows(db_url, p)  # a near-duplicate of first's
    # An earlier `generation` event of `first`, with another prompt, wins: first moves to that prompt.
    send(db_url, p, [generation("first", -10, event_id="first:gen-0", prompt="def moved():\n", completion=variant(0))])
    result = build(db_url, p)
    got = rows(db_url, p)
    assert got["kto:completion:first"]["prompt"] == "def moved():\n"
    assert "kto:completion:second" in got
    assert (result.rows_added, result.rows_changed, result.rows_removed) == (1, 1, 0)


def test_a_group_member_changed_during_a_build_is_derived_again(db_url, monkeypatch):
    """A generation loaded with its group, then changed by a concurrent ingest before its own page is read."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite lets no other writer in during a build")
    p = new_project(db_url)
    send(db_url, p, decided("first", "accepted", 0, variant(0)))
    send(db_url, p, decided("second", "accepted", 1, variant(1)))
    age(db_url, p, 60, "first")  # first's page comes first and loads second with it
    original, calls = _Build._write, []

    def write_then_ingest(self: _Build, page: Any) -> None:
        original(self, page)
        if not calls:
            calls.append(1)
            send(db_url, p, [feedback("second", "rejected", 30)])  # another transaction, committed meanwhile

    monkeypatch.setattr(_Build, "_write", write_then_ingest)
    build(db_url, p, batch_size=1)
    got = rows(db_url, p)
    assert got["kto:completion:second"]["label"] is False
    assert got["kto:completion:second"]["event_ids"] == ["second:gen", "second:rejected"]


@pytest.mark.parametrize("job", ["_store", "_changed_page"])
def test_an_error_in_a_database_job_fails_the_build_and_writes_nothing(db_url, monkeypatch, job):
    """A failed read or write of a page fails the build: nothing after it runs, nothing is written, and no thread
    of the build is left behind."""
    p = new_project(db_url)
    for n in range(3):
        send(db_url, p, decided(f"g{n}", "accepted", n, variant(n), prompt=f"def g{n}():\n"))
    original, calls = getattr(_Build, job), []

    def fail_second(self: _Build, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("job failed")
        return original(self, *args)

    monkeypatch.setattr(_Build, job, fail_second)
    with pytest.raises(RuntimeError, match="job failed"):
        build(db_url, p, batch_size=1)
    assert len(calls) == 2  # nothing after the failed job
    assert not [t for t in threading.enumerate() if t.name.startswith("build-rows")]
    assert rows(db_url, p, active=None) == {}
    monkeypatch.undo()
    assert build(db_url, p, batch_size=1).rows_added == 3


def test_a_page_loads_the_rest_of_the_prompt_groups_of_its_generations(db_url):
    """A page holds its changed generations with the other members of their groups, marked as seen: a later page
    that holds one of them unchanged needs no second derivation of the group."""
    p = new_project(db_url)
    send(db_url, p, decided("first", "accepted", 0, variant(0)) + decided("second", "rejected", 1, variant(1)))
    with session_scope(db_url) as session:
        build_ = _Build(session, p, _config(session.get(Project, p)), utcnow(), db_url.startswith("postgresql"))
        query = _select().where(Generation.project_id == p).order_by(Generation.generation_id)
        first, second = [_gen(r) for r in session.execute(query).all()]
        page = build_._page([first])
        assert page is not None and {g.generation_id for g in page.gens.values()} == {"first", "second"}
        assert build_.seen == {second.id: second.updated_at}


def test_the_report_counts_what_the_build_did(db_url):
    p = new_project(db_url)
    send(db_url, p, edit("e", 0) + edit("t", 0, prompt="def t():\n", final=BODY + " \n"))
    send(db_url, p, decided("a", "accepted", 0, variant(0)) + decided("r", "rejected", 1, variant(1)))
    result = build(db_url, p)
    report = result.report
    assert result.generations_read == 4 and report["generations_derived"] == 4
    assert report["rows"] == {"edit_pair": 1, "choice_pair": 1, "kto": 5, "sft": 1}
    assert report["added"] == report["rows"] and result.rows_added == sum(report["rows"].values())
    assert gates(result) == {"trivial_edit": 1}
    assert report["edit_pairs_dropped"] == {"trivial_edit": 1}  # what the gates cost the preference data
    assert set(report) >= {"gates", "rows", "added", "changed", "removed", "derivation", "seconds"}
    assert set(report["rows"]) == set(KINDS)
    with session_scope(db_url) as session:
        stored = session.scalars(select(DatasetBuild).where(DatasetBuild.project_id == p)).one()
        assert stored.report["gates"] == report["gates"] and stored.finished_at is not None


def test_a_build_makes_no_full_garbage_collection_and_restores_the_thresholds(db_url, monkeypatch):
    """The build keeps the cyclic collector's full passes off (feedback.rows._gc_paused) and the young generations
    on; the thresholds come back after it, also after an error."""
    p = new_project(db_url)
    send(db_url, p, edit("e", 0))
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    run = _Build.run

    def recording(self, *args):
        seen.append(gc.get_threshold())
        return run(self, *args)

    monkeypatch.setattr(_Build, "run", recording)
    build(db_url, p)
    assert seen == [(before[0], before[1], rows_module.FULL_COLLECTIONS_OFF)] and gc.isenabled()
    assert gc.get_threshold() == before
    monkeypatch.setattr(_Build, "run", lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build(db_url, p)
    assert gc.get_threshold() == before


def test_an_unknown_project_is_not_found(db_url):
    with pytest.raises(NotFound), session_scope(db_url) as session:
        build_rows(session, 10**9)


def test_a_rebuild_under_new_gates_parses_no_text_twice(db_url, monkeypatch):
    p = new_project(db_url)
    send(db_url, p, edit("g1", 0) + edit("g2", 1, final=EDITED.replace("if x > 0:", "if x > 0")))
    syntax.clear_cache()
    first = build(db_url, p)
    calls: list[str] = []
    original = syntax._compiles
    monkeypatch.setattr(syntax, "_compiles", lambda source: calls.append(source) or original(source))
    with session_scope(db_url) as session:
        session.get(Project, p).settings = {"dataset": {"min_chars": 2}}  # new gates: everything is re-derived
    second = build(db_url, p)
    assert second.report["generations_derived"] == 2 and first.report["gates"] == second.report["gates"]
    assert gates(second)["broken_syntax"] == 1
    assert calls == []
