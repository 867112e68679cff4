"""Our DPO trainer runs each pair as one packed row (the prompt once, chosen and rejected both attending to it) where
TRL runs prompt + chosen and prompt + rejected: the log-probs, their gradients, the reference log-probs and TRL's
loss and metrics must be TRL's own, in fp32, whatever the prompts' lengths and the architecture."""

from pathlib import Path
from typing import Any

import pytest

from tests.trainers.cpu.pairs import PROMPTS, TOLERANCE, batch_of, log_probs_and_grads, model_call, preference_trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(params=["tiny", "qwen2", "qwen2-eager"])
def causal_lm(request: pytest.FixtureRequest, tiny_model: Path) -> tuple[Any, Any]:
    """The bootstrapped tiny Llama (sdpa attention: a boolean mask), and a randomly initialised Qwen2 (attention biases)
    on its tokenizer, with sdpa or eager attention (an additive mask)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from ml.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    if request.param == "tiny":
        return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), tokenizer
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    attention = "eager" if request.param.endswith("eager") else "sdpa"
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention), tokenizer


def test_packed_pairs_give_trls_log_probs_gradients_and_metrics(causal_lm: tuple[Any, Any], tmp_path: Path) -> None:
    import torch
    from trl import DPOTrainer

    from trainers.cpu.packing import SharedPrefix

    model, tokenizer = causal_lm
    trainer = preference_trainer(model, tokenizer, PROMPTS, tmp_path)
    batch = batch_of(trainer)
    prompt_lengths = {len(ids) for ids in trainer.train_dataset["prompt_ids"]}
    assert len(prompt_lengths) == len(PROMPTS)  # the prompts are padded differently inside the packed rows
    policy = trainer.model
    packed = SharedPrefix.wrap(trainer, policy)
    assert isinstance(packed, SharedPrefix)
    assert packed._forward(**{k: model_call(batch)[k] for k in ("input_ids", "attention_mask", "labels")})

    theirs, their_logps, their_grads = log_probs_and_grads(policy, policy, model_call(batch))
    ours, our_logps, our_grads = log_probs_and_grads(policy, packed, model_call(batch))

    torch.testing.assert_close(our_logps, their_logps, rtol=0, atol=TOLERANCE)
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field), rtol=0, atol=TOLERANCE)
    assert torch.equal(ours.label_mask, theirs.label_mask)
    assert torch.equal(ours.is_top1 & ours.label_mask, theirs.is_top1 & theirs.label_mask)
    assert set(our_grads) == set(their_grads) and any("lora_A" in name for name in our_grads)
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-4 * float(grad.abs().max()))

    ref_theirs = DPOTrainer.compute_ref_log_probs(trainer, policy, batch)
    ref_ours = trainer.compute_ref_log_probs(policy, batch)
    for a, b in zip(ref_ours, ref_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOLERANCE)

    metrics = []
    for compute in (DPOTrainer._compute_loss, type(trainer)._compute_loss):
        trainer._metrics["train"].clear()
        loss = compute(trainer, policy, dict(batch), False)
        metrics.append({"loss": float(loss)} | {k: v[-1] for k, v in trainer._metrics["train"].items()})
    metrics[0].pop("num_tokens"), metrics[1].pop("num_tokens")  # a running total
    assert metrics[1] == pytest.approx(metrics[0], abs=TOLERANCE)


def test_batches_it_cannot_pack_go_through_trls_forward(tiny_model: Path, tmp_path: Path) -> None:
    """A one-token prompt leaves no prefix to share: the whole batch takes TRL's forward, with TRL's figures."""
    import torch
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.cpu.packing import SharedPrefix

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), ["#", *PROMPTS[:2]], tmp_path)
    assert min(len(ids) for ids in trainer.train_dataset["prompt_ids"]) == 1
    batch = batch_of(trainer)
    packed = SharedPrefix.wrap(trainer, trainer.model)
    assert packed._forward(**{k: model_call(batch)[k] for k in ("input_ids", "attention_mask", "labels")}) is None
    with torch.no_grad():
        theirs = trainer.model(**model_call(batch)).log_probs
        ours = packed(**model_call(batch)).log_probs
    assert torch.equal(ours, theirs)


def test_rows_padded_to_a_span_multiple_give_the_same_log_probs(tiny_model: Path, tmp_path: Path) -> None:
    """With a bf16 base the packed rows are padded to a multiple of 16 tokens (few matmul shapes): padding that no
    token attends to and no label covers, so the log-probs and metrics are those of unpadded rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.cpu.packing import BF16_SPAN_MULTIPLE, SharedPrefix

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    batch = model_call(batch_of(trainer))
    exact = SharedPrefix.wrap(trainer, trainer.model)
    padded = SharedPrefix.wrap(trainer, trainer.model, BF16_SPAN_MULTIPLE)
    widths: list[int] = []  # of the rows the model runs: the packed span
    hook = model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: widths.append(out.shape[1]))
    with torch.no_grad():
        a, b = exact(**batch), padded(**batch)
    hook.remove()
    exact_span, padded_span = widths
    assert exact_span % BF16_SPAN_MULTIPLE  # so the padding is real here
    assert padded_span == -(-exact_span // BF16_SPAN_MULTIPLE) * BF16_SPAN_MULTIPLE
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=0, atol=TOLERANCE)
