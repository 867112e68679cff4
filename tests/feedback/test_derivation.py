"""Tests for feedback.derivation, without a database: each kind of row and each gate, from generations built in
memory (test_rows.py covers the same rules end to end, through ingest and the build)."""

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from feedback.config import DatasetConfig
from feedback.derivation import GATES, KINDS, PAIRS_PER_ACCEPTED, Gen, derive, version

BODY = "    total = 0\n    for x in items:\n        total += x\n    return total\n"
EDITED = "    total = 0\n    for x in items:\n        if x > 0:\n            total += x\n    return total\n"
PROMPT = "def total(items):\n"
T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
DEFAULTS = DatasetConfig()


def gen(gid: str, outcome: str, t: float = 0, completion: str = BODY, **fields: Any) -> Gen:
    """A generation as the join leaves it: shown at t, decided at t + 2, edited at t + 5 (by `outcome`)."""
    shown = T0 + timedelta(seconds=t)
    values: dict[str, Any] = {
        "id": abs(hash(gid)),
        "generation_id": gid,
        "outcome": outcome,
        "prompt_hash": None,
        "edit_distance": None,
        "language": "python",
        "file_path": None,
        "user": f"user-{gid}",
        "model": None,
        "excluded": False,
        "shown_at": shown,
        "shown_event_id": f"{gid}:gen",
        "decided_at": shown + timedelta(seconds=2),
        "decision_event_id": f"{gid}:{outcome}" if outcome in ("accepted", "rejected") else None,
        "edited_at": shown + timedelta(seconds=5),
        "edited_event_id": f"{gid}:edited" if outcome == "edited" else None,
        "rating_score": None,
        "rated_at": None,
        "rating_event_id": None,
        "updated_at": shown,
        "prompt": PROMPT,
        "messages": None,
        "completion": completion,
        "final_text": completion if outcome == "accepted" else None,
        "prefix": None,
        "suffix": None,
    }
    values.update(fields)
    if values["prompt_hash"] is None and values["prompt"] is not None:
        values["prompt_hash"] = f"hash:{values['prompt']}"
    return Gen(**values)


def edited(gid: str, t: float = 0, final: str = EDITED, **fields: Any) -> Gen:
    return gen(gid, "edited", t, final_text=final, **fields)


def variant(n: int) -> str:
    """Completions of one prompt that are no near-duplicates of each other."""
    names = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    return f"    {names[n]}_{n} = [{n} * {n + 3}]\n    return sum({names[n]}_{n}) - {n * 7}\n"


def rows_of(*gens: Gen, config: DatasetConfig = DEFAULTS) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """source_key -> row, and the gates that counted (those above 0)."""
    derived = derive(gens, config)
    assert set(derived.gates) <= set(GATES)
    assert all(row["kind"] in KINDS for row in derived.rows)
    return {row["source_key"]: row for row in derived.rows}, {k: v for k, v in derived.gates.items() if v}


# -- the kinds of row --------------------------------------------------------------------------------------------


def test_an_edit_yields_an_edit_pair_an_sft_row_and_two_kto_rows():
    got, gates = rows_of(edited("g1"))
    assert set(got) == {"edit:g1", "sft:g1", "kto:final:g1", "kto:completion:g1"} and gates == {}
    pair = got["edit:g1"]
    assert (pair["kind"], pair["prompt"], pair["chosen"], pair["rejected"]) == ("edit_pair", PROMPT, EDITED, BODY)
    assert (got["sft:g1"]["kind"], got["sft:g1"]["completion"], got["sft:g1"]["label"]) == ("sft", EDITED, None)
    assert (got["kto:final:g1"]["completion"], got["kto:final:g1"]["label"]) == (EDITED, True)
    assert (got["kto:completion:g1"]["completion"], got["kto:completion:g1"]["label"]) == (BODY, False)
    for row in got.values():
        assert row["generation_ids"] == ["g1"] and row["event_ids"] == ["g1:gen", "g1:edited"]
        assert row["occurred_at"] == T0 + timedelta(seconds=5) and row["user"] == "user-g1"
        assert row["prompt_hash"] == f"hash:{PROMPT}"


def test_an_accepted_and_a_rejected_completion_of_a_prompt_make_a_choice_pair():
    good, bad = gen("good", "accepted", 0, variant(0)), gen("bad", "rejected", 1, variant(1))
    other = gen("other", "rejected", 2, variant(2), prompt="def unrelated():\n")
    got, gates = rows_of(good, bad, other)
    assert set(got) == {"choice:good>bad", "kto:completion:good", "kto:completion:bad", "kto:completion:other"}
    pair = got["choice:good>bad"]
    assert (pair["kind"], pair["chosen"], pair["rejected"], pair["user"]) == (
        "choice_pair",
        variant(0),
        variant(1),
        "user-good",
    )
    assert pair["generation_ids"] == ["good", "bad"]
    assert pair["event_ids"] == ["good:gen", "good:accepted", "bad:gen", "bad:rejected"]
    assert pair["occurred_at"] == T0 + timedelta(seconds=3)
    assert got["kto:completion:good"]["label"] is True and got["kto:completion:bad"]["label"] is False
    assert got["kto:completion:bad"]["event_ids"] == ["bad:gen", "bad:rejected"]


def test_each_accepted_completion_pairs_with_the_earliest_rejected_ones():
    group = [gen("a", "accepted", 0, variant(0))] + [gen(f"r{n}", "rejected", n, variant(n)) for n in range(1, 8)]
    got, _ = rows_of(*group)
    pairs = sorted(k for k, row in got.items() if row["kind"] == "choice_pair")
    assert pairs == [f"choice:a>r{n}" for n in range(1, PAIRS_PER_ACCEPTED + 1)]


def test_a_rating_outweighs_the_edit_and_the_decision():
    rated = {"rating_score": 1.0, "rated_at": T0 + timedelta(seconds=9), "rating_event_id": "e:rating"}
    got, _ = rows_of(edited("e", **rated), gen("r", "rejected", 0, variant(1), prompt="def r():\n", **rated))
    assert got["kto:completion:e"]["label"] is True
    assert got["kto:completion:e"]["event_ids"] == ["e:gen", "e:rating"]
    assert got["kto:completion:r"]["label"] is True  # rejected, but rated good
    assert got["kto:final:e"]["event_ids"] == ["e:gen", "e:edited"]  # the edit rows keep their own events


def test_a_rating_alone_is_a_verdict_and_a_neutral_one_is_none():
    got, gates = rows_of(
        gen("shown", "shown", prompt="def a():\n"),
        gen("zero", "shown", prompt="def b():\n", rating_score=0.0),
        gen("bad", "shown", prompt="def c():\n", rating_score=-1.0, rated_at=T0, rating_event_id="bad:rating"),
    )
    assert set(got) == {"kto:completion:bad"} and got["kto:completion:bad"]["label"] is False and gates == {}


# -- the gates ---------------------------------------------------------------------------------------------------


def test_excluded_and_promptless_generations_make_no_rows():
    got, gates = rows_of(
        edited("hidden", excluded=True),
        gen("orphan", "edited", final_text=EDITED, prompt=None, completion=None, shown_event_id=None),
    )
    assert got == {} and gates == {"excluded": 1, "no_prompt": 1}


def test_a_secret_in_the_changed_region_leaves_the_generation_out():
    with_secret = "    password = '<secret:password>'\n" + BODY
    got, gates = rows_of(
        edited("added", final=with_secret),
        edited("kept", prompt="def z():\n", completion=with_secret, final=with_secret + "\n# ok\n"),
    )
    assert gates == {"secret_in_change": 1}
    assert not any(k.endswith(":added") for k in got) and "edit:kept" in got


def test_a_trivial_edit_is_an_accept_and_a_total_rewrite_makes_no_edit_pair():
    rewrite = "pass\n"
    got, gates = rows_of(edited("t", final=BODY + " \n"), edited("w", prompt="def w():\n", final=rewrite))
    assert gates == {"trivial_edit": 1, "total_rewrite": 1}
    assert {k for k in got if k.endswith(":t")} == {"kto:completion:t"} and got["kto:completion:t"]["label"] is True
    assert {k for k in got if k.endswith(":w")} == {"sft:w", "kto:final:w", "kto:completion:w"}
    assert got["kto:completion:w"]["label"] is False


def test_a_python_edit_that_breaks_syntax_is_left_out():
    broken = EDITED.replace("if x > 0:", "if x > 0")
    got, gates = rows_of(
        edited("py", final=broken),
        edited("js", final=broken, prompt="function total(items) {\n", language="javascript"),
        edited("pyw", final=broken, prompt="# x\n", language=None, file_path="gui/Total.PYW"),
        edited("mid", prompt="def mid():\n", prefix="r = f(\n", completion="    items, 2)\n", final="    items, 3)\n"),
    )
    assert gates == {"broken_syntax": 2}
    for gid in ("py", "pyw"):
        assert {k for k in got if k.endswith(f":{gid}")} == {f"kto:completion:{gid}"}
    assert {"edit:js", "edit:mid"} <= set(got)  # not Python; parses after its prefix
    off = DatasetConfig(check_python_syntax=False)
    assert "edit:py" in rows_of(edited("py", final=broken), config=off)[0]


def test_empty_and_too_long_texts_are_counted_per_row():
    config = DatasetConfig(max_chars=80)
    got, gates = rows_of(
        gen("blank", "accepted", completion="  \n", prompt="def a():\n"),
        edited("long", prompt="def b():\n", final=EDITED + "# " + "x" * 80 + "\n"),
        config=config,
    )
    # blank: its kto row; long: edit pair, final kto and sft (its completion is short enough).
    assert gates == {"empty": 1, "too_long": 3}
    assert set(got) == {"kto:completion:long"}


def test_near_duplicates_of_a_prompt_keep_the_earliest():
    got, gates = rows_of(gen("first", "accepted", 0, variant(0)), gen("second", "accepted", 5, variant(0)))
    assert set(got) == {"kto:completion:first"} and gates == {"near_duplicate": 1}
    # A choice pair whose rejected completion repeats an earlier rejected one repeats a kept pair.
    group = [gen("a", "accepted", 0, variant(0)), gen("r1", "rejected", 1, variant(1))]
    group.append(gen("r2", "rejected", 2, variant(1)))
    got, gates = rows_of(*group)
    assert {k for k in got if k.startswith("choice:")} == {"choice:a>r1"}
    assert gates == {"near_duplicate": 2}  # r2's kto row and the pair a>r2


def test_a_choice_pair_of_the_same_text_is_trivial():
    got, gates = rows_of(gen("a", "accepted", 0, BODY), gen("r", "rejected", 1, BODY + "\n"))
    assert gates == {"trivial_pair": 1} and not any(k.startswith("choice:") for k in got)


# -- as a function -----------------------------------------------------------------------------------------------


def test_the_rows_do_not_depend_on_the_order_of_the_generations():
    gens = [edited("e", 0), edited("e2", 1, final=EDITED + "\n", prompt="def two(items):\n")]
    gens += [gen(f"g{n}", "accepted" if n % 2 else "rejected", n, variant(n)) for n in range(6)]
    gens.append(gen("dup", "accepted", 9, variant(1)))
    first = derive(gens, DEFAULTS)
    for seed in range(3):
        shuffled = gens[:]
        random.Random(seed).shuffle(shuffled)
        again = derive(shuffled, DEFAULTS)
        assert sorted(again.rows, key=lambda r: r["source_key"]) == sorted(first.rows, key=lambda r: r["source_key"])
        assert again.gates == first.gates


def test_the_version_names_the_gate_settings_only():
    assert version(DEFAULTS) == version(DatasetConfig(eval_fraction=0.3, split_by="user"))
    assert version(DEFAULTS) != version(DatasetConfig(min_chars=2))
    assert version(DEFAULTS) != version(DatasetConfig(sft_accepted=True))


def test_accepted_upstream_generations_are_distilled_into_sft_rows_and_ours_are_not() -> None:
    gens = [
        gen("up", "accepted", 0, model="upstream", completion="    return a + b\n"),
        gen("down", "rejected", 1, model="upstream", completion="    pass\n"),
        gen("own", "accepted", 2, model="v1", completion="    return b + a\n"),
    ]
    rows = derive(gens, DatasetConfig()).rows
    sft = [r for r in rows if r["kind"] == "sft"]
    assert [(r["source_key"], r["completion"]) for r in sft] == [("sft:accepted:up", "    return a + b\n")]
    negatives = {r["source_key"] for r in rows if r["kind"] == "kto" and r["label"] is False}
    assert negatives == {"kto:completion:down"}  # a rejected upstream generation is a KTO negative, as ours are
    assert not [r for r in derive(gens, DatasetConfig(distill_upstream=False)).rows if r["kind"] == "sft"]
    both = derive(gens, DatasetConfig(sft_accepted=True)).rows
    assert sorted(r["source_key"] for r in both if r["kind"] == "sft") == ["sft:accepted:up", "sft:kept:own"]
    own = derive(gens, DatasetConfig(sft_accepted=True, distill_upstream=False)).rows
    assert [r["source_key"] for r in own if r["kind"] == "sft"] == ["sft:kept:own"]


def test_trivial_is_by_meaning_not_by_size():
    """Line-end spaces and blank lines are trivial; a two-character convention, a space inside a line and a changed
    indentation are what a user cares about, however small."""
    trivial = BODY.replace("    return", "\n\n    return").replace("= 0\n", "= 0   \n")
    convention = BODY.replace("return total", "return (total)")
    spacing = BODY.replace("total += x", "total+=x")
    indent = BODY.replace("        total += x", "      total += x")
    got, gates = rows_of(
        edited("trivial", final=trivial),
        edited("convention", prompt="def c():\n", final=convention),
        edited("spacing", prompt="def s():\n", final=spacing),
        edited("indent", prompt="def i():\n", final=indent, language="text"),
    )
    assert gates == {"trivial_edit": 1}
    assert {"edit:convention", "edit:spacing", "edit:indent"} <= set(got) and "edit:trivial" not in got
    assert got["kto:completion:trivial"]["label"] is True and got["kto:completion:convention"]["label"] is False


def test_the_edit_pairs_each_gate_dropped_are_counted():
    derived = derive(
        [
            edited("trivial", final=BODY + "\n\n"),
            edited("rewrite", prompt="def w():\n", final="pass\n"),
            edited("broken", prompt="def b():\n", final=EDITED.replace("if x > 0:", "if x > 0")),
            edited("kept", prompt="def k():\n"),
            edited("again", t=1, prompt="def k():\n"),  # repeats "kept": a near-duplicate pair
            gen("accepted", "accepted", prompt="def a():\n"),
        ],
        DEFAULTS,
    )
    assert dict(derived.dropped_edit_pairs) == {
        "trivial_edit": 1,
        "total_rewrite": 1,
        "broken_syntax": 1,
        "near_duplicate": 1,
    }


def test_min_edit_distance_still_makes_small_edits_trivial_when_set():
    small = BODY.replace("return total", "return (total)")
    got, gates = rows_of(edited("g", final=small), config=DatasetConfig(min_edit_distance=0.2))
    assert gates == {"trivial_edit": 1} and "edit:g" not in got
