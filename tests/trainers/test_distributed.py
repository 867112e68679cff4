"""Tests for trainers.distributed: two gloo processes on the CPU, launched as the gpu worker launches them, train
the same loss curve as one process with the same global batch, and hand back one adapter."""

import random
from pathlib import Path

import pytest

from demo.corpus import style_pair
from ml.loading import load_model, load_tokenizer
from rewards import training as reward_training
from rewards.config import RewardRunConfig
from tests.trainers.tiny import random_model
from trainers import distributed
from trainers.config import DPORunConfig
from trainers.methods import dpo

# The reward model's batches are the same pairs in one process or two: the curves agree to float rounding. DPO's
# length-grouped sampler sizes its megabatches by the per-device batch (transformers' get_length_grouped_indices), so
# two processes see the same pairs in another order: the same curve within a few thousandths of a loss near 0.69.
TOLERANCE = {"reward": 1e-4, "dpo": 5e-3}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("dist") / "model")


def pairs(n: int = 16) -> list[dict[str, str]]:
    rng = random.Random(3)
    out = []
    for _ in range(n):
        prompt, chosen, rejected = style_pair(rng, "type_hints", True)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


def one_process(kind: str, config, model_dir: Path, rows, work: Path):
    from transformers import set_seed

    set_seed(config.seed)
    head = "reward" if kind == "reward" else "causal"
    model = load_model(str(model_dir), head=head)
    tokenizer = load_tokenizer(str(model_dir))
    train = reward_training.train if kind == "reward" else dpo.train
    return train(config, model, tokenizer, rows, work)


@pytest.mark.parametrize(
    "kind, config",
    [
        (
            "dpo",
            DPORunConfig(
                batch_size=4,
                max_steps=4,
                max_length=256,
                cpu_speedups=False,
                precompute_ref_log_probs=False,  # as a launched run trains (trainers/distributed.py)
                eval_examples=0,
            ),
        ),
        ("reward", RewardRunConfig(batch_size=4, max_steps=4, max_length=256, eval_examples=0)),
    ],
)
def test_two_processes_train_the_loss_curve_of_one(kind, config, model_dir, tmp_path):
    rows = pairs()
    alone = one_process(kind, config, model_dir, rows, tmp_path / "one")
    two = config.model_copy(update={"num_processes": 2})
    assert distributed.command(two, tmp_path / "spec.json")[2] == "torch.distributed.run"
    launched = distributed.train(kind, two, (str(model_dir), None), rows, tmp_path / "two")

    assert launched.metrics["num_processes"] == 2
    one_curve, two_curve = alone.metrics["loss_curve"], launched.metrics["loss_curve"]
    assert len(one_curve) == len(two_curve) == 4
    assert two_curve == pytest.approx(one_curve, abs=TOLERANCE[kind])
    assert list((tmp_path / "two" / "launched" / "adapter").glob("adapter_model.*"))  # one adapter, from rank 0
    assert type(launched.model).__name__.startswith("Peft")


def test_a_batch_that_does_not_split_over_the_processes_is_refused(model_dir, tmp_path):
    config = DPORunConfig(batch_size=3, max_steps=1, num_processes=2, cpu_speedups=False)
    with pytest.raises(RuntimeError, match="does not split"):
        distributed.train("dpo", config, (str(model_dir), None), pairs(4), tmp_path)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_a_run_that_asks_for_two_processes_registers_one_adapter(sqlite_url, model_dir, tmp_path):
    from core.db import session_scope
    from tests.trainers.test_runs import FAST, run_once, settings_for
    from tests.trainers.tiny import style_project
    from trainers import registry
    from trainers.models import AdapterVersion

    project_id = style_project(sqlite_url, model_dir)
    run = run_once(sqlite_url, project_id, "dpo", settings_for(sqlite_url, tmp_path), **FAST, num_processes=2)
    assert run.status == "succeeded", run.error
    assert len(run.version_ids) == 1
    with session_scope(sqlite_url) as session:
        version = session.get(AdapterVersion, run.version_ids[0])
        assert version.manifest["config"]["num_processes"] == 2
        assert version.metrics["train"]["num_processes"] == 2 and version.metrics["train"]["steps"] == 4
        assert list(registry.verified_path(version).glob("adapter_model.*"))
