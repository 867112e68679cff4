"""Continue's data-destination bodies -> our events (pure mapping; no database, no HTTP)."""

import copy
import json
from pathlib import Path

import pytest

from core.errors import InvalidInput
from feedback.integrations.continue_dev import map_continue_event
from feedback.schemas import EVENT_TYPES

FIXTURES = Path(__file__).parent / "fixtures" / "continue"
BASE = {"timestamp", "userId", "userAgent", "selectedProfileId", "eventName", "schema"}
# Other Continue releases of the same 0.2.0 schema (packages/config-yaml/src/schemas/data/base/0.2.0.ts):
# `createdAt` for `timestamp`, `schemaVersion` for `schema`, plus a session id and the platform.
BASE_CREATED_AT = {"createdAt", "userId", "userAgent", "selectedProfileId", "eventName", "schemaVersion"} | {
    "sessionId",
    "platform",
}
MAPPED = ["autocomplete", "nextEditOutcome", "editOutcome", "chatFeedback"]
# Every field of Continue's 0.2.0 schema for the event:
# packages/config-yaml/src/schemas/data/<event>/v0.2.0.ts in github.com/continuedev/continue.
FIELDS = {
    "autocomplete": BASE
    | {
        "disable",
        "maxPromptTokens",
        "debounceDelay",
        "maxSuffixPercentage",
        "prefixPercentage",
        "transform",
        "template",
        "multilineCompletions",
        "slidingWindowPrefixPercentage",
        "slidingWindowSize",
        "useCache",
        "onlyMyCode",
        "useRecentlyEdited",
        "useImports",
        "accepted",
        "time",
        "prefix",
        "suffix",
        "prompt",
        "completion",
        "modelProvider",
        "modelName",
        "cacheHit",
        "filepath",
        "gitRepo",
        "completionId",
        "uniqueId",
    },
    "nextEditOutcome": BASE
    | {
        "elapsed",
        "completionOptions",
        "completionId",
        "requestId",
        "gitRepo",
        "uniqueId",
        "fileUri",
        "workspaceDirUri",
        "prompt",
        "userEdits",
        "userExcerpts",
        "originalEditableRange",
        "completion",
        "cursorPosition",
        "accepted",
        "aborted",
        "modelProvider",
        "modelName",
    },
    "editOutcome": BASE
    | {
        "prompt",
        "completion",
        "modelName",
        "modelTitle",
        "modelProvider",
        "accepted",
        "previousCode",
        "newCode",
        "previousCodeLines",
        "newCodeLines",
        "lineChange",
        "filepath",
    },
    "chatFeedback": BASE | {"prompt", "completion", "modelTitle", "feedback", "sessionId"},
    "tokensGenerated": BASE | {"model", "provider", "promptTokens", "generatedTokens"},
}


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def valid(events: list[dict]) -> list[dict]:
    """Every mapped event passes our own contract, exactly as POST /v1/events would parse it."""
    for event in events:
        EVENT_TYPES[event["type"]].model_validate(event)
    return events


def by_type(events: list[dict]) -> dict[str, dict]:
    out = {e["type"]: e for e in events}
    assert len(out) == len(events), "one event per type"
    return out


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_fixtures_have_continues_exact_shape(name):
    body = load(name)
    assert set(body) == {"name", "data", "schema", "level", "profileId"}
    assert body["name"] == body["data"]["eventName"] == name
    assert body["schema"] == body["data"]["schema"] == "0.2.0" and body["level"] == "all"
    assert set(body["data"]) == FIELDS[name]


@pytest.mark.parametrize("name", MAPPED)
def test_created_at_fixtures_have_the_other_releases_shape(name):
    body = load(f"{name}_createdAt")
    assert body["name"] == body["data"]["eventName"] == name
    assert body["schema"] == body["data"]["schemaVersion"] == "0.2.0"
    assert set(body["data"]) == FIELDS[name] - BASE | BASE_CREATED_AT


@pytest.mark.parametrize("name", MAPPED)
def test_both_shapes_of_0_2_0_map_to_the_same_events(name):
    """`timestamp` + `schema` or `createdAt` + `schemaVersion`: the same event, the same ids, the same time."""
    with_timestamp, with_created_at = load(name), load(f"{name}_createdAt")
    ours, theirs = valid(map_continue_event(with_timestamp)), valid(map_continue_event(with_created_at))
    if name != "editOutcome":  # editOutcome has no id: its generation id is a digest of `data`, which differs
        assert [e["event_id"] for e in theirs] == [e["event_id"] for e in ours]
    assert [e["occurred_at"] for e in theirs] == [e["occurred_at"] for e in ours]
    assert [e["type"] for e in theirs] == [e["type"] for e in ours]


def test_chat_feedback_with_created_at_is_accepted():
    body = load("chatFeedback_createdAt")
    assert "timestamp" not in body["data"]
    events = valid(map_continue_event(body))
    assert [e["type"] for e in events] == ["generation", "rating"]
    assert events[1]["occurred_at"] == "2025-06-30T14:10:03.117000+00:00"


def test_autocomplete_accepted():
    body = load("autocomplete")
    events = valid(map_continue_event(body))
    gen, acc = by_type(events)["generation"], by_type(events)["accepted"]
    cid = body["data"]["completionId"]
    assert gen["generation_id"] == acc["generation_id"] == f"continue:autocomplete:{cid}"
    assert gen["event_id"] == f"continue:autocomplete:{cid}:generation"
    assert acc["event_id"] == f"continue:autocomplete:{cid}:accepted"
    assert gen["occurred_at"] == acc["occurred_at"] == "2025-06-30T14:05:12.481000+00:00"
    assert gen["prompt"] == body["data"]["prompt"] and gen["completion"] == "    return a + b"
    assert gen["prefix"] == "def add(a, b):\n" and gen["suffix"] == "\n\nprint(add(1, 2))\n"
    assert gen["model"] == "qwen2.5-coder:1.5b" and gen["latency_ms"] == 412
    assert gen["file_path"] == "/home/dev/project/src/calc utils.py"
    assert gen["metadata"] == {
        "source": "continue",
        "continue_event": "autocomplete",
        "model_provider": "ollama",
        "user_agent": "Visual Studio Code/1.101.2 (Continue/1.1.56)",
        "profile_id": "local",
        "cache_hit": False,
        "git_repo": "https://github.com/example/project.git",
    }
    assert "accepted_text" not in acc


def test_autocomplete_not_accepted_and_undecided():
    body = load("autocomplete")
    body["data"]["accepted"] = False
    rej = by_type(valid(map_continue_event(body)))["rejected"]
    assert rej["event_id"].endswith(":rejected") and rej["reason"] == "not_accepted"
    del body["data"]["accepted"]  # optional in Continue's schema: only the generation is known
    assert [e["type"] for e in valid(map_continue_event(body))] == ["generation"]


def test_autocomplete_epoch_millisecond_timestamp():
    body = load("autocomplete")
    body["data"]["timestamp"] = 1751292312481  # Date.now(), as some Continue versions send it
    assert {e["occurred_at"] for e in map_continue_event(body)} == {"2025-06-30T14:05:12.481000+00:00"}


def test_timestamp_normalised_to_utc():
    body = load("editOutcome")
    body["data"]["timestamp"] = "2025-06-30T16:07:45.902+02:00"
    assert {e["occurred_at"] for e in map_continue_event(body)} == {"2025-06-30T14:07:45.902000+00:00"}


def test_next_edit_rejected():
    body = load("nextEditOutcome")
    events = valid(map_continue_event(body))
    gen, rej = by_type(events)["generation"], by_type(events)["rejected"]
    cid = body["data"]["completionId"]
    assert gen["generation_id"] == rej["generation_id"] == f"continue:nextEdit:{cid}"
    assert rej["event_id"] == f"continue:nextEdit:{cid}:rejected" and rej["reason"] == "not_accepted"
    assert gen["occurred_at"] == "2025-06-30T14:07:50.123000+00:00"
    assert gen["prompt"] == body["data"]["prompt"] and gen["completion"] == body["data"]["completion"]
    assert gen["model"] == "mercury-coder" and gen["latency_ms"] == 873
    assert gen["file_path"] == "/home/dev/project/src/calc.py"
    assert "prefix" not in gen and "suffix" not in gen
    assert gen["metadata"]["request_id"] == "req_01JZ2K3M4N5P6Q7R8S9T0V1W2X"
    assert (gen["metadata"]["cursor_line"], gen["metadata"]["cursor_character"]) == (1, 16)


def test_next_edit_accepted_aborted_and_undecided():
    body = load("nextEditOutcome")
    body["data"]["accepted"] = True
    assert [e["type"] for e in valid(map_continue_event(body))] == ["generation", "accepted"]
    del body["data"]["accepted"]
    body["data"]["aborted"] = True
    rej = by_type(valid(map_continue_event(body)))["rejected"]
    assert rej["reason"] == "aborted"
    del body["data"]["aborted"], body["data"]["requestId"], body["data"]["gitRepo"]  # all optional
    assert [e["type"] for e in valid(map_continue_event(body))] == ["generation"]


def test_edit_outcome_accepted():
    body = load("editOutcome")
    events = valid(map_continue_event(body))
    gen, acc = by_type(events)["generation"], by_type(events)["accepted"]
    assert gen["generation_id"] == acc["generation_id"]
    assert gen["generation_id"].startswith("continue:edit:") and len(gen["generation_id"]) == 14 + 32
    assert gen["prompt"] == "add type hints"
    assert gen["completion"] == body["data"]["newCode"]  # the code change is what was accepted
    assert gen["prefix"] == body["data"]["previousCode"]
    assert gen["model"] == "claude-sonnet-4-20250514"
    assert gen["file_path"] == "/home/dev/project/src/calc.py"
    assert gen["metadata"]["model_title"] == "Claude 4 Sonnet" and gen["metadata"]["line_change"] == 0


def test_edit_outcome_rejected_is_a_different_generation():
    body = load("editOutcome")
    accepted = map_continue_event(body)
    body["data"]["accepted"] = False
    rejected = valid(map_continue_event(body))
    rej = by_type(rejected)["rejected"]
    assert rej["reason"] == "rejected"
    assert rej["generation_id"] != accepted[0]["generation_id"]  # no id in Continue: content decides


def test_edit_outcome_from_an_older_build_without_code_fields():
    body = load("editOutcome")
    for key in (
        "modelName",
        "previousCode",
        "newCode",
        "previousCodeLines",
        "newCodeLines",
        "lineChange",
        "filepath",
    ):
        del body["data"][key]
    gen = by_type(valid(map_continue_event(body)))["generation"]
    assert gen["completion"] == body["data"]["completion"] and "prefix" not in gen
    assert gen["model"] == "Claude 4 Sonnet" and "file_path" not in gen


def test_chat_feedback_thumbs_up_then_down_join_the_same_turn():
    body = load("chatFeedback")
    up = valid(map_continue_event(body))
    gen, rating = by_type(up)["generation"], by_type(up)["rating"]
    assert gen["generation_id"] == rating["generation_id"]
    assert gen["generation_id"].startswith("continue:chat:")
    assert gen["prompt"] == body["data"]["prompt"] and gen["completion"] == body["data"]["completion"]
    assert gen["model"] == "GPT-4o" and gen["session"] == body["data"]["sessionId"]
    assert rating["score"] == 1 and "comment" not in rating

    body["data"]["feedback"] = False
    body["data"]["timestamp"] = "2025-06-30T14:10:09.000Z"
    down = valid(map_continue_event(body))
    assert by_type(down)["generation"]["event_id"] == gen["event_id"]  # a resent generation: deduped
    later = by_type(down)["rating"]
    assert later["generation_id"] == gen["generation_id"] and later["score"] == -1
    assert later["event_id"] != rating["event_id"]  # a changed vote is a new event, and the later one wins

    body["data"]["completion"] = "Use reversed(items)."
    assert map_continue_event(body)[0]["generation_id"] != gen["generation_id"]  # another turn


def test_chat_feedback_without_a_vote():
    body = load("chatFeedback")
    del body["data"]["feedback"]  # optional in Continue's schema
    assert [e["type"] for e in valid(map_continue_event(body))] == ["generation"]


@pytest.mark.parametrize("name", MAPPED + [f"{n}_createdAt" for n in MAPPED])
def test_resending_maps_to_the_same_events(name):
    body = load(name)
    first = map_continue_event(body)
    reordered = {k: body[k] for k in reversed(body)}
    reordered["data"] = {k: body["data"][k] for k in reversed(body["data"])}  # key order must not matter
    assert map_continue_event(copy.deepcopy(body)) == first == map_continue_event(reordered)
    assert all(len(e["event_id"]) <= 200 and len(e["generation_id"]) <= 200 for e in first)
    assert len({e["event_id"] for e in first}) == len(first)


@pytest.mark.parametrize("name", MAPPED + [f"{n}_createdAt" for n in MAPPED])
def test_user_is_a_digest_never_continues_user_token(name):
    body = load(name)
    events = map_continue_event(body)
    assert events[0]["user"].startswith("continue-user:")
    assert body["data"]["userId"] not in json.dumps(events)
    body["data"]["userId"] = ""  # Continue's default when no userToken is set
    assert "user" not in map_continue_event(body)[0]


def test_ignored_event_names():
    assert map_continue_event(load("tokensGenerated")) == []
    for name in ("chatInteraction", "editInteraction", "nextEditWithHistory", "toolUsage", "someFutureEvent"):
        assert map_continue_event({"name": name, "data": {}, "schema": "0.2.0", "level": "all", "profileId": ""}) == []
    old = load("tokensGenerated") | {"schema": "0.1.0"}  # a version we cannot read, but an event we ignore
    assert map_continue_event(old) == []


def _without(path: str):
    def change(body: dict) -> None:
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[part]
        del target[last]

    return change


def _set(path: str, value):
    def change(body: dict) -> None:
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[part]
        target[last] = value

    return change


@pytest.mark.parametrize(
    ("fixture", "change", "detail"),
    [
        ("autocomplete", _without("name"), "name: required"),
        ("autocomplete", _set("name", 3), "name: must be a string"),
        ("autocomplete", _without("data"), "data: required"),
        ("autocomplete", _set("data", ["x"]), "data: must be an object"),
        ("autocomplete", _set("level", "some"), "level: must be 'all' or 'noCode'"),
        ("autocomplete", _set("profileId", 7), "profileId: must be a string"),
        ("autocomplete", _set("schema", "0.1.0"), "schema: unsupported version '0.1.0'"),
        ("autocomplete", _set("level", "noCode"), "level: 'noCode' leaves out the prompt and code"),
        ("autocomplete", _without("data.completionId"), "data.completionId: required"),
        ("autocomplete", _set("data.completionId", 42), "data.completionId: must be a string"),
        ("autocomplete", _set("data.completionId", ""), "data.completionId: must be a non-empty id"),
        ("autocomplete", _set("data.completionId", "x" * 129), "data.completionId: must be a non-empty id"),
        ("autocomplete", _without("data.timestamp"), "data.timestamp: required"),
        ("chatFeedback_createdAt", _without("data.createdAt"), "data.timestamp: required (or data.createdAt)"),
        ("chatFeedback_createdAt", _set("data.createdAt", "soon"), "data.createdAt: not a valid time"),
        ("editOutcome_createdAt", _set("data.createdAt", False), "data.createdAt: must be an ISO 8601 string"),
        ("autocomplete", _set("data.timestamp", "yesterday"), "data.timestamp: not a valid time"),
        ("autocomplete", _set("data.timestamp", True), "data.timestamp: must be an ISO 8601 string"),
        ("autocomplete", _set("data.accepted", "yes"), "data.accepted: must be a boolean"),
        ("autocomplete", _without("data.completion"), "data.completion: required"),
        ("autocomplete", _set("data.time", "fast"), "data.time: must be a number"),
        ("autocomplete", _without("data.modelName"), "data.modelName: required"),
        ("nextEditOutcome", _set("data.cursorPosition", [1, 2]), "data.cursorPosition: must be an object"),
        (
            "nextEditOutcome",
            _set("data.cursorPosition.line", "1"),
            "data.cursorPosition.line: must be a number",
        ),
        ("nextEditOutcome", _without("data.fileUri"), "data.fileUri: required"),
        ("editOutcome", _without("data.accepted"), "data.accepted: required"),
        ("editOutcome", _set("data.newCode", 5), "data.newCode: must be a string"),
        ("editOutcome", _without("data.prompt"), "data.prompt: required"),
        ("chatFeedback", _without("data.sessionId"), "data.sessionId: required"),
        ("chatFeedback", _set("data.feedback", 1), "data.feedback: must be a boolean"),
    ],
)
def test_wrong_shapes_raise_invalid_input_with_the_field_path(fixture, change, detail):
    body = load(fixture)
    change(body)
    with pytest.raises(InvalidInput) as exc:
        map_continue_event(body)
    assert exc.value.detail.startswith(detail), exc.value.detail


def test_body_must_be_an_object():
    with pytest.raises(InvalidInput, match=r"^body: must be a JSON object"):
        map_continue_event(["not", "an", "object"])  # type: ignore[arg-type]
