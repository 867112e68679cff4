"""Dataset snapshots: a split that never leaks a prompt, a deterministic hash, immutability, tenancy, and an export
that `datasets` loads and TRL's trainers prepare as it is."""

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import get_sessionmaker
from core.errors import InvalidInput, NotFound
from core.projects import Project, create_project
from feedback.models import DatasetBuild, SnapshotRow, TrainingRow
from feedback.snapshots import cut_snapshot, export_snapshot, get_snapshot, list_snapshots
from tests.factories import T0, new_id

CONTENT: dict[str, dict[str, Any]] = {
    "edit_pair": {"chosen": "    return a + b\n", "rejected": "    return a - b\n"},
    "choice_pair": {"chosen": "    return sum((a, b))\n", "rejected": "    pass\n"},
    "kto": {"completion": "    return a + b\n", "label": True},
    "sft": {"completion": "    return a + b\n"},
}


def training_row(
    project_id: int,
    kind: str = "edit_pair",
    prompt: str = "def add(a, b):\n",
    *,
    t: float = 0,
    user: str | None = None,
    messages: list[dict[str, str]] | None = None,
    active: bool = True,
    source_key: str | None = None,
    **fields: Any,
) -> TrainingRow:
    content = {**CONTENT[kind], **fields}
    gid = new_id()
    hashed = json.dumps(messages, sort_keys=True) if messages else prompt
    return TrainingRow(
        project_id=project_id,
        kind=kind,
        source_key=source_key or f"{gid}:{kind}",
        prompt=None if messages else prompt,
        messages=messages,
        prompt_hash=hashlib.sha256(hashed.encode()).hexdigest(),
        user=user,
        occurred_at=T0 + timedelta(seconds=t),
        generation_ids=[gid],
        event_ids=[f"{gid}:generation", f"{gid}:edited"],
        content_hash=hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest(),
        active=active,
        built_at=T0,
        **content,
    )


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with get_sessionmaker(db_url)() as s:
        yield s
        s.rollback()


def project(session: Session, split_by: str = "time", eval_fraction: float = 0.1) -> Project:
    p = create_project(session, f"p-{uuid.uuid4().hex[:10]}")
    p.settings = {"dataset": {"split_by": split_by, "eval_fraction": eval_fraction}}
    session.flush()
    return p


def sides(session: Session, snapshot_id: int) -> dict[str, set[str]]:
    """prompt_hash -> the splits its rows sit in."""
    found: dict[str, set[str]] = defaultdict(set)
    for prompt_hash, split in session.execute(
        select(SnapshotRow.prompt_hash, SnapshotRow.split).where(SnapshotRow.snapshot_id == snapshot_id)
    ):
        found[prompt_hash].add(split)
    return found


@pytest.mark.parametrize("split_by", ["time", "user"])
def test_split_never_puts_a_prompt_on_both_sides(session, split_by):
    p = project(session, split_by, eval_fraction=0.3)
    rows = []
    for g in range(40):
        for i, kind in enumerate(("edit_pair", "kto", "sft", "choice_pair")[: 1 + g % 4]):
            rows.append(training_row(p.id, kind, f"def f{g}():\n", t=g * 10 + i * 500, user=f"u{(g + i) % 7}"))
    rows.append(training_row(p.id, "sft", "def gone():\n", active=False))
    session.add_all(rows)
    session.flush()

    snap = cut_snapshot(session, p.id)
    found = sides(session, snap.id)
    assert len(found) == 40 and all(len(s) == 1 for s in found.values())
    assert {"train", "eval"} == set().union(*found.values())
    assert snap.row_count == len(rows) - 1
    assert sum(n for by_split in snap.counts.values() for n in by_split.values()) == snap.row_count
    assert snap.counts["sft"] == {
        split: session.query(SnapshotRow).filter_by(snapshot_id=snap.id, kind="sft", split=split).count()
        for split in ("train", "eval")
    }
    assert snap.config["split_by"] == split_by and snap.config["eval_fraction"] == 0.3


def test_time_split_holds_out_the_newest_prompt_groups(session):
    p = project(session, "time", eval_fraction=0.2)
    # Ten groups; group g's newest row is at 100 * g, except group 0, whose late edit makes it the newest of all.
    session.add_all(training_row(p.id, "edit_pair", f"def f{g}():\n", t=100 * g) for g in range(10))
    session.add_all(training_row(p.id, "sft", f"def f{g}():\n", t=100 * g - 50) for g in range(10))
    session.add(training_row(p.id, "kto", "def f0():\n", t=5000))
    session.flush()

    snap = cut_snapshot(session, p.id)
    held = {r.prompt for r in session.scalars(select(SnapshotRow).filter_by(snapshot_id=snap.id, split="eval"))}
    assert held == {"def f0():\n", "def f9():\n"}
    assert snap.counts["edit_pair"] == {"train": 8, "eval": 2} and snap.counts["kto"] == {"train": 0, "eval": 1}


@pytest.mark.parametrize("split_by", ["time", "user"])
def test_the_split_is_stratified_so_eval_holds_edits_among_many_newer_kto_rows(session, split_by):
    p = project(session, split_by, eval_fraction=0.1)
    # Four edited prompts, then thirty prompts with KTO rows only, all newer: unstratified, the newest 10% of the
    # groups would all be KTO-only and the evaluation would have no edit to replay.
    for g in range(4):
        session.add(training_row(p.id, "edit_pair", f"def e{g}():\n", t=g, user=f"editor{g}"))
        session.add(training_row(p.id, "sft", f"def e{g}():\n", t=g, user=f"editor{g}"))
    session.add_all(training_row(p.id, "kto", f"def k{g}():\n", t=100 + g, user=f"k{g % 9}") for g in range(30))
    session.flush()
    snap = cut_snapshot(session, p.id)
    assert snap.counts["edit_pair"]["eval"] >= 1 and snap.counts["sft"]["eval"] >= 1
    assert snap.counts["edit_pair"]["train"] >= 1 and snap.counts["kto"]["eval"] >= 1
    assert all(len(s) == 1 for s in sides(session, snap.id).values())


@pytest.mark.parametrize(("groups", "fraction", "held"), [(1, 0.5, 0), (2, 0.01, 1), (3, 0.9, 2), (5, 0.0, 0)])
def test_time_split_edges(session, groups, fraction, held):
    p = project(session, "time", eval_fraction=fraction)
    session.add_all(training_row(p.id, "sft", f"def f{g}():\n", t=g) for g in range(groups))
    session.flush()
    snap = cut_snapshot(session, p.id)
    assert snap.counts["sft"] == {"train": groups - held, "eval": held}


def test_user_split_keeps_a_user_on_one_side_and_a_shared_prompt_with_its_earliest_user(session):
    p = project(session, "user", eval_fraction=0.3)
    users = [f"user-{i}" for i in range(12)]
    session.add_all(training_row(p.id, "edit_pair", f"def {u}_{j}():\n", t=j, user=u) for u in users for j in range(3))
    session.flush()

    side_of_user: dict[str, set[str]] = defaultdict(set)
    for r in session.scalars(select(SnapshotRow).filter_by(snapshot_id=cut_snapshot(session, p.id).id)):
        side_of_user[r.user].add(r.split)
    assert all(len(s) == 1 for s in side_of_user.values())
    assert {"train", "eval"} == set().union(*side_of_user.values())

    # A prompt that a train user asked after an eval user (and once with no user) follows the eval user.
    first = next(u for u in users if side_of_user[u] == {"eval"})
    later = next(u for u in users if side_of_user[u] == {"train"})
    session.add_all(
        [
            training_row(p.id, "edit_pair", "def shared():\n", t=200, user=later),
            training_row(p.id, "sft", "def shared():\n", t=100, user=first),
            training_row(p.id, "kto", "def shared():\n", t=50, user=None),
            training_row(p.id, "sft", "def newcomer():\n", t=1000, user="user-new"),
        ]
    )
    session.flush()
    rows = list(session.scalars(select(SnapshotRow).filter_by(snapshot_id=cut_snapshot(session, p.id).id)))
    assert {r.split for r in rows if r.prompt == "def shared():\n"} == {"eval"}
    # Stable: new prompts and a new user move nobody who was already there.
    assert all({r.split} == side_of_user[r.user] for r in rows if r.user in users and r.prompt != "def shared():\n")


def test_user_split_with_one_user_keeps_everything_in_train(session):
    p = project(session, "user", eval_fraction=0.99)
    session.add_all(training_row(p.id, "sft", f"def f{g}():\n", user="solo") for g in range(4))
    session.flush()
    assert cut_snapshot(session, p.id).counts["sft"] == {"train": 4, "eval": 0}


def fixed_rows(project_id: int) -> list[TrainingRow]:
    """Rows whose every field is fixed, so that their snapshot hash is a known constant."""
    chat = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "add two numbers ✓"}]
    rows = [
        training_row(project_id, "edit_pair", f"def f{i}():\n", t=i, user=f"u{i % 2}", source_key=f"g{i}:edit")
        for i in range(4)
    ]
    rows.append(training_row(project_id, "kto", "", t=9.5, messages=chat, label=False, source_key="gk:kto"))
    for i, r in enumerate(rows):
        r.generation_ids, r.event_ids = [f"g{i}"], [f"g{i}:generation", f"g{i}:edited"]
    return rows


def test_hash_is_deterministic_backend_independent_and_follows_content(session):
    p = project(session, "time", eval_fraction=0.25)
    session.add_all(fixed_rows(p.id))
    session.flush()
    first = cut_snapshot(session, p.id)
    second = cut_snapshot(session, p.id)
    assert first.sha256 == second.sha256 != ""
    # The same constant on Postgres and SQLite: the hash depends on the rows, never on the backend.
    assert first.sha256 == "8a8d244eceee1c86c3b7716f556eec66026599e3c0383659215d6b10e6f36dc3"

    row = session.scalars(select(TrainingRow).filter_by(project_id=p.id, source_key="g1:edit")).one()
    row.chosen = "    return b + a\n"
    session.flush()
    changed = cut_snapshot(session, p.id)
    assert changed.sha256 != first.sha256

    row.active = False
    session.flush()
    fewer = cut_snapshot(session, p.id)
    assert fewer.row_count == first.row_count - 1 and fewer.sha256 not in (first.sha256, changed.sha256)


def test_a_snapshot_never_changes_when_rows_do(session):
    p = project(session)
    session.add_all(fixed_rows(p.id))
    session.flush()
    snap = cut_snapshot(session, p.id)
    before = [
        (r.source_key, r.split, r.chosen, r.completion)
        for r in session.scalars(select(SnapshotRow).filter_by(snapshot_id=snap.id).order_by(SnapshotRow.source_key))
    ]
    for row in session.scalars(select(TrainingRow).filter_by(project_id=p.id)):
        row.chosen, row.completion, row.active = "changed", "changed", False
    session.add(training_row(p.id, "sft", "def later():\n"))
    session.flush()
    session.expire_all()

    after = [
        (r.source_key, r.split, r.chosen, r.completion)
        for r in session.scalars(select(SnapshotRow).filter_by(snapshot_id=snap.id).order_by(SnapshotRow.source_key))
    ]
    assert after == before
    kept = get_snapshot(session, p.id, snap.id)
    assert (kept.sha256, kept.row_count, kept.counts) == (snap.sha256, snap.row_count, snap.counts)
    assert cut_snapshot(session, p.id).row_count == 1


def test_another_projects_snapshot_is_not_found(session, tmp_path):
    mine, theirs = project(session), project(session)
    session.add(training_row(theirs.id))
    session.flush()
    snap = cut_snapshot(session, theirs.id)
    with pytest.raises(NotFound):
        get_snapshot(session, mine.id, snap.id)
    with pytest.raises(NotFound):
        export_snapshot(session, mine.id, snap.id, tmp_path, "jsonl")
    assert list_snapshots(session, mine.id) == [] and list_snapshots(session, theirs.id) == [snap]
    build = DatasetBuild(project_id=theirs.id, started_at=T0)
    session.add(build)
    session.flush()
    with pytest.raises(NotFound):
        cut_snapshot(session, mine.id, build_id=build.id)
    assert cut_snapshot(session, theirs.id, build_id=build.id).build_id == build.id


CHAT = [{"role": "user", "content": "Write add(a, b)."}]


def export_rows(project_id: int) -> list[TrainingRow]:
    rows = []
    for g in range(6):
        prompt = f"def add{g}(a, b):\n"
        rows.append(training_row(project_id, "edit_pair", prompt, t=g))
        rows.append(training_row(project_id, "kto", prompt, t=g, label=g % 2 == 0))
        rows.append(training_row(project_id, "sft", prompt, t=g))
    rows.append(training_row(project_id, "choice_pair", "def add6(a, b):\n", t=6))
    rows += [
        training_row(project_id, "edit_pair", "", messages=CHAT + [{"role": "user", "content": str(i)}], t=i)
        for i in range(3)
    ]
    return rows


def test_export_files_and_manifest(session, tmp_path):
    p = project(session, "time", eval_fraction=0.2)
    session.add_all(export_rows(p.id))
    session.flush()
    snap = cut_snapshot(session, p.id)

    paths = export_snapshot(session, p.id, snap.id, tmp_path, "jsonl")
    names = sorted(path.name for path in paths)
    assert names == sorted(
        ["preference-train.jsonl", "preference-eval.jsonl", "preference-chat-train.jsonl"]
        + ["kto-train.jsonl", "kto-eval.jsonl", "sft-train.jsonl", "sft-eval.jsonl"]
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["snapshot_id"], manifest["sha256"], manifest["counts"]) == (snap.id, snap.sha256, snap.counts)
    for entry in manifest["files"]:
        data = (tmp_path / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["rows"] == len(data.splitlines())
    assert sum(f["rows"] for f in manifest["files"]) == snap.row_count
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left

    chat = json.loads((tmp_path / "preference-chat-train.jsonl").read_text().splitlines()[0])
    assert chat["prompt"][0] == CHAT[0] and chat["chosen"] == [
        {"role": "assistant", "content": CONTENT["edit_pair"]["chosen"]}
    ]
    kto = [json.loads(line) for line in (tmp_path / "kto-train.jsonl").read_text().splitlines()]
    assert set(kto[0]) == {"prompt", "completion", "label"} | {
        "editloop_kind",
        "editloop_source_key",
        "editloop_generation_ids",
        "editloop_event_ids",
    }
    assert {k["label"] for k in kto} == {True, False}

    # A later export of a snapshot without kto rows into the same folder leaves no kto file behind.
    for row in session.scalars(select(TrainingRow).filter_by(project_id=p.id, kind="kto")):
        row.active = False
    session.flush()
    later = cut_snapshot(session, p.id)
    export_snapshot(session, p.id, later.id, tmp_path, "jsonl")
    assert not (tmp_path / "kto-train.jsonl").exists() and (tmp_path / "sft-train.jsonl").exists()

    with pytest.raises(InvalidInput):
        export_snapshot(session, p.id, snap.id, tmp_path, "csv")  # type: ignore[arg-type]


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["def add(a, b):\n    return a + b\n", "Write add(a, b). user assistant system"] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


def tiny_model(tok: Any) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    return AutoModelForCausalLM.from_config(config)


def test_export_loads_with_datasets_and_trl_prepares_it(pg_url, tmp_path, monkeypatch):
    """The contract: an exported file trains as it is. No downloads: a tokenizer and model made here."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    trl = pytest.importorskip("trl")
    import huggingface_hub.constants
    from datasets import load_dataset

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)

    with get_sessionmaker(pg_url)() as session:
        p = project(session, "time", eval_fraction=0.2)
        session.add_all(export_rows(p.id))
        session.flush()
        snap = cut_snapshot(session, p.id)
        parquet = export_snapshot(session, p.id, snap.id, tmp_path / "parquet", "parquet")
        jsonl = export_snapshot(session, p.id, snap.id, tmp_path / "jsonl", "jsonl")
        session.rollback()
    assert [f.stem for f in parquet] == [f.stem for f in jsonl]

    def load(path: Path) -> Any:
        kind = "parquet" if path.suffix == ".parquet" else "json"
        return load_dataset(kind, data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))

    loaded = {f.stem: load(f) for f in parquet}
    for f in jsonl:
        assert load(f).to_list() == loaded[f.stem].to_list()
    train = {stem: ds for stem, ds in loaded.items() if stem.endswith("-train")}
    assert {stem: len(ds) for stem, ds in train.items()} == {
        "preference-train": snap.counts["edit_pair"]["train"] - 3 + snap.counts["choice_pair"]["train"],
        "preference-chat-train": 3,
        "kto-train": snap.counts["kto"]["train"],
        "sft-train": snap.counts["sft"]["train"],
    }

    tok = tiny_tokenizer()
    common = dict(
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        max_length=128,
        per_device_train_batch_size=2,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        max_steps=1,
        save_strategy="no",
    )

    def prepared(trainer_cls: Any, config_cls: Any, ds: Any, name: str, **kwargs: Any) -> Any:
        args = config_cls(output_dir=str(tmp_path / name), **common)
        return trainer_cls(model=tiny_model(tok), args=args, train_dataset=ds, processing_class=tok, **kwargs)

    for stem in ("preference-train", "preference-chat-train"):
        dpo = prepared(trl.DPOTrainer, trl.DPOConfig, train[stem], stem, ref_model=tiny_model(tok))
        assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dpo.train_dataset.column_names)
        assert len(dpo.train_dataset) == len(train[stem])
    kto = prepared(trl.KTOTrainer, trl.KTOConfig, train["kto-train"], "kto", ref_model=tiny_model(tok))
    assert {"prompt_ids", "completion_ids", "label"} <= set(kto.train_dataset.column_names)
    assert len(kto.train_dataset) == len(train["kto-train"])
    sft = prepared(trl.SFTTrainer, trl.SFTConfig, train["sft-train"], "sft")
    assert "input_ids" in sft.train_dataset.column_names and len(sft.train_dataset) == len(train["sft-train"])
    # The provenance columns go no further than data preparation: one DPO step trains on the file as it is.
    assert dpo.train().training_loss > 0
