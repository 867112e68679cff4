"""A randomly initialised tiny code model (for tests of the run machinery, which need weights that train, not
weights that write good code) and a project whose users edit generations toward a style rule."""

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.db import session_scope
from core.projects import create_project
from core.settings import Settings
from demo.corpus import corpus, style_pair
from feedback.rows import build_rows
from feedback.service import ingest
from trainers import runs
from trainers.models import TrainingRun

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def random_model(out: Path, vocab: int = 512) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(400, seed=1), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    config = LlamaConfig(
        vocab_size=len(wrapped),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    import torch

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    wrapped.save_pretrained(out)
    return out


def style_events(n: int, axis: str = "type_hints", value: object = True, seed: int = 0) -> list[dict]:
    """Generations that violate the rule, each edited by its user to follow it; every third one rejected instead,
    every fifth accepted untouched where it already follows the rule."""
    rng = random.Random(seed)
    events: list[dict] = []
    for i in range(n):
        prompt, chosen, rejected = style_pair(rng, axis, value)
        gid = f"g{i}-{uuid.uuid4().hex[:6]}"
        t = T0 + timedelta(minutes=i)
        events.append(
            {
                "event_id": f"{gid}:gen",
                "type": "generation",
                "generation_id": gid,
                "occurred_at": t.isoformat(),
                "prompt": prompt,
                "completion": rejected,
                "model": "base",
                "language": "python",
                "user": f"u{i % 4}",
            }
        )
        events.append(
            {
                "event_id": f"{gid}:edit",
                "type": "edited",
                "generation_id": gid,
                "occurred_at": (t + timedelta(seconds=30)).isoformat(),
                "final_text": chosen,
            }
        )
    return events


def style_project(
    url: str,
    model_dir: Path,
    n: int = 60,
    settings: dict | None = None,
    axis: str = "type_hints",
    value: object = True,
    **dataset: object,
) -> int:
    """A project with `n` edited generations, its rows built; returns its id."""
    with session_scope(url) as session:
        project = create_project(session, f"m-{uuid.uuid4().hex[:10]}")
        project.settings = {
            "model": {"base_model": str(model_dir), **(settings or {})},
            "dataset": {"eval_fraction": 0.2, **dataset},
        }
        project_id = project.id
    events = style_events(n, axis, value)
    with session_scope(url) as session:
        for start in range(0, len(events), 500):
            ingest(session, project_id, events[start : start + 500], Settings())
    with session_scope(url) as session:
        build_rows(session, project_id)
    return project_id


def execute(url: str, project_id: int, kind: str, data_dir: Path, **config: object) -> TrainingRun:
    """Creates a run of `kind` with `config` and executes it in this process, as a worker would; returns the run."""
    with session_scope(url) as session:
        run_id = runs.create_run(session, project_id, kind, config, nudge=False).id
    runs.execute(url, run_id, Settings(database_url=url, data_dir=data_dir))
    with session_scope(url) as session:
        run = runs.get_run(session, project_id, run_id)
        session.expunge(run)
        return run
