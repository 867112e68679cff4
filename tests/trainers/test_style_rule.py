"""What training is for, on the bootstrapped tiny code model: users edit the model's code toward a style rule
(single quotes: it changes no length, so "longer wins" cannot pass for learning it). Through the whole path (events
-> rows -> snapshot -> run -> registry), the reward model ranks held-out pairs by the rule, and DPO moves the
policy's own greedy generations on held-out prompts toward it without breaking their syntax."""

import random
from pathlib import Path

import pytest

from core.db import session_scope
from core.settings import Settings
from demo.corpus import prompt_for, sample_function
from demo.style import follows
from trainers import metrics, registry, runs
from trainers.models import AdapterVersion

from .tiny import style_project

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
AXIS = "quotes"


def rule_share(texts: list[str], value: str) -> tuple[float, int]:
    verdicts = [follows(t, AXIS, value) for t in texts]
    decided = [v for v in verdicts if v is not None]
    return (sum(decided) / len(decided) if decided else 0.0), len(decided)


def train(url: str, project_id: int, kind: str, tmp_path: Path, **config) -> AdapterVersion:
    with session_scope(url) as session:
        run_id = runs.create_run(session, project_id, kind, config, nudge=False).id
    assert runs.execute(url, run_id, Settings(database_url=url, data_dir=tmp_path)) == "succeeded"
    with session_scope(url) as session:
        run = runs.get_run(session, project_id, run_id)
        version = session.get(AdapterVersion, run.version_ids[-1])
        session.expunge(version)
        return version


def test_reward_model_and_dpo_learn_a_style_rule(sqlite_url: str, tiny_model: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    from ml.loading import load_model, load_tokenizer

    # Fresh prompts that no split holds. The rule users teach is the quote style the base's greedy code uses least,
    # so there is room to move.
    rng = random.Random(12345)
    prompts = [prompt_for(sample_function(rng)) for _ in range(48)]
    tokenizer = load_tokenizer(str(tiny_model))
    base_texts = metrics.generate(load_model(str(tiny_model)), tokenizer, prompts, max_new_tokens=160)
    single, _ = rule_share(base_texts, "single")
    value = "double" if single >= 0.5 else "single"

    # A quote swap is a small edit: below the default "trivial edit" gate, which this project lowers.
    project_id = style_project(sqlite_url, tiny_model, n=300, axis=AXIS, value=value, min_edit_distance=0.001)

    reward = train(sqlite_url, project_id, "reward", tmp_path, max_steps=120, eval_examples=60)
    held_out = reward.metrics["eval"]["reward_accuracy"]
    assert held_out["n"] >= 40
    assert held_out["accuracy"] > 0.9, held_out
    assert abs(held_out["baselines"]["longer_wins"] - 0.5) < 0.2  # the rule is not a length rule

    # 50 steps: by 80 the rule share reaches ~0.78 but the parse rate falls from 0.77 to 0.60 (over-optimisation).
    policy = train(sqlite_url, project_id, "dpo", tmp_path, max_steps=50, eval_examples=40, eval_max_new_tokens=160)
    assert policy.metrics["eval"]["implicit_reward"]["accuracy"] > 0.8

    model = PeftModel.from_pretrained(load_model(str(tiny_model)), str(registry.verified_path(policy)))
    assert metrics.generate(model, tokenizer, prompts[:4], max_new_tokens=160, adapter_disabled=True) == base_texts[:4]
    tuned_texts = metrics.generate(model, tokenizer, prompts, max_new_tokens=160)
    base_share, base_n = rule_share(base_texts, value)
    tuned_share, tuned_n = rule_share(tuned_texts, value)
    base_parse = metrics.parse_rate(base_texts)["rate"]
    tuned_parse = metrics.parse_rate(tuned_texts)["rate"]
    print(  # figures for the record (pytest -s)
        f"rule quotes={value}: reward held-out accuracy {held_out['accuracy']:.3f} (n={held_out['n']}),"
        f" implicit {policy.metrics['eval']['implicit_reward']['accuracy']:.3f};"
        f" greedy rule share {base_share:.2f} (n={base_n}) -> {tuned_share:.2f} (n={tuned_n});"
        f" parse rate {base_parse:.2f} -> {tuned_parse:.2f}"
    )
    assert base_n >= 10 and tuned_n >= 10
    assert tuned_share >= base_share + 0.25, (base_share, tuned_share)
    assert tuned_parse >= base_parse - 0.15, (base_parse, tuned_parse)
