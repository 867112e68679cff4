"""A snapshot's rows as the lists of records the trainers and the evaluation consume.

Chat rows (a `messages` prompt) are rendered to text with the tokenizer's chat template, so one run trains on one
format: TRL decides a dataset's format from its first row."""

from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from feedback import texts
from feedback.models import Generation
from feedback.snapshots import FAMILIES, get_snapshot, snapshot_records
from feedback.syntax import is_python


def load_rows(
    session: Session,
    project_id: int,
    snapshot_id: int,
    family: str,
    split: str,
    kinds: tuple[str, ...] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    get_snapshot(session, project_id, snapshot_id)  # scoped to the project, or NotFound
    records = snapshot_records(session, snapshot_id, kinds or FAMILIES[family], split, limit)
    _mark_python(session, project_id, records)
    return records


def _mark_python(session: Session, project_id: int, records: list[dict[str, Any]]) -> None:
    """`editloop_python`: whether the row's generation is Python (by language, else by file suffix); None when
    the generation says neither."""
    ids = sorted({gid for r in records for gid in r["editloop_generation_ids"][:1]})
    known: dict[str, bool | None] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = select(Generation.generation_id, Generation.language, Generation.file_path).where(
            tuple_(Generation.project_id, Generation.generation_id).in_([(project_id, g) for g in chunk])
        )
        for gid, language, path in session.execute(query):
            known[gid] = is_python(language, path)
    for record in records:
        first = record["editloop_generation_ids"][:1]
        record["editloop_python"] = known.get(first[0]) if first else None


def as_text(records: list[dict[str, Any]], tokenizer: Any, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Plain-text records with only `fields` (TRL's columns): chat prompts through the chat template, assistant
    replies unwrapped."""
    out = []
    for record in records:
        row: dict[str, Any] = {}
        for field in fields:
            value = record[field]
            if field == "prompt" and isinstance(value, list):
                value = tokenizer.apply_chat_template(value, add_generation_prompt=True, tokenize=False)
            elif isinstance(value, list):
                value = "".join(m["content"] for m in value)
            row[field] = value
        out.append(row)
    return out


def upstream_completions(session: Session, project_id: int, records: list[dict[str, Any]]) -> dict[str, str]:
    """For each record (by `editloop_source_key`), the latest completion the project's upstream was logged giving for
    the same prompt (same prompt hash as the record's generation), where one exists: the rented model's answer on a
    held-out prompt, compared at no extra API spend."""
    first = {
        r["editloop_source_key"]: r["editloop_generation_ids"][0] for r in records if r.get("editloop_generation_ids")
    }
    hashes: dict[str, str] = {}
    ids = sorted(set(first.values()))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = select(Generation.generation_id, Generation.prompt_hash).where(
            tuple_(Generation.project_id, Generation.generation_id).in_([(project_id, g) for g in chunk])
        )
        hashes.update({gid: h for gid, h in session.execute(query) if h is not None})
    wanted = sorted(set(hashes.values()))
    latest: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        query = (
            texts.select_with_code(
                Generation.prompt_hash, Generation.excluded, Generation.decision, Generation.edited_event_pk
            )
            .where(
                Generation.project_id == project_id,
                Generation.model == "upstream",
                Generation.prompt_hash.in_(wanted[start : start + 500]),
            )
            .order_by(Generation.shown_at)
        )
        for row in session.execute(query):
            values: tuple[Any, ...] = tuple(row)
            prompt_hash, excluded, decision, edited_pk = values[:4]
            completion = texts.code(excluded, decision, edited_pk is not None, *values[4:]).get("completion")
            if isinstance(completion, str):
                latest[prompt_hash] = completion  # ordered by time: the latest wins
    return {key: latest[hashes[gid]] for key, gid in first.items() if hashes.get(gid) in latest}
