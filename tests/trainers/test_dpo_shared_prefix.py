"""Our DPO trainer runs each pair as one packed row (the prompt once, chosen and rejected both attending to it) where
TRL runs prompt + chosen and prompt + rejected: the log-probs, their gradients, the reference log-probs and TRL's
loss and metrics must be TRL's own, in fp32, whatever the prompts' lengths and the architecture."""

import random
from pathlib import Path
from typing import Any

import pytest

from demo.corpus import style_pair

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
TOLERANCE = 1e-4  # per-sequence log-probs are sums of ~70 fp32 terms


def preference_trainer(
    model: Any, tokenizer: Any, prompts: list[str], tmp_path: Path, bf16_reference: bool = False
) -> Any:
    """Our DPOTrainer subclass around `model`, with a LoRA whose B matrices are random (so the adapter is not a
    no-op and the gradients reach every LoRA weight), on style pairs whose prompts are `prompts`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    from trainers.methods.dpo import _shared_prefix_trainer

    rng = random.Random(0)
    rows = []
    for prompt in prompts:
        _, chosen, rejected = style_pair(rng, "type_hints", True)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    args = DPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        precompute_ref_log_probs=False,
        activation_checkpointing=False,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = _shared_prefix_trainer(bf16_reference=bf16_reference)(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return trainer


def batch_of(trainer: Any) -> dict[str, Any]:
    dataset = trainer.train_dataset
    return trainer.data_collator([dataset[i] for i in range(len(dataset))])


def model_call(batch: dict[str, Any]) -> dict[str, Any]:
    """The call TRL makes for the policy's and the reference's log-probs."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": labels,
        "fused_lm_head": True,
        "use_cache": False,
    }


def log_probs_and_grads(model: Any, call: Any, kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    model.zero_grad()
    outputs = call(**kwargs)
    sequences = outputs.log_probs.sum(dim=1)
    sequences.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return outputs, sequences.detach(), grads


PROMPTS = [
    "# find the cheapest item\n",
    "# a much longer prompt than the others, so that the prompts of one batch differ in length\n# sort them\n",
    "# x\n",
    "# count the urgent devices with a low cost\n",
]


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

    from trainers.methods.dpo import _SharedPrefix

    model, tokenizer = causal_lm
    trainer = preference_trainer(model, tokenizer, PROMPTS, tmp_path)
    batch = batch_of(trainer)
    prompt_lengths = {len(ids) for ids in trainer.train_dataset["prompt_ids"]}
    assert len(prompt_lengths) == len(PROMPTS)  # the prompts are padded differently inside the packed rows
    policy = trainer.model
    packed = _SharedPrefix.wrap(trainer, policy)
    assert isinstance(packed, _SharedPrefix)
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
    from trainers.methods.dpo import _SharedPrefix

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), ["#", *PROMPTS[:2]], tmp_path)
    assert min(len(ids) for ids in trainer.train_dataset["prompt_ids"]) == 1
    batch = batch_of(trainer)
    packed = _SharedPrefix.wrap(trainer, trainer.model)
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
    from trainers.methods.dpo import BF16_SPAN_MULTIPLE, _SharedPrefix

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    batch = model_call(batch_of(trainer))
    exact = _SharedPrefix.wrap(trainer, trainer.model)
    padded = _SharedPrefix.wrap(trainer, trainer.model, BF16_SPAN_MULTIPLE)
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


def test_bf16_frozen_linears_multiply_in_bf16_and_restore_the_model(tiny_model: Path, tmp_path: Path) -> None:
    """Inside the context the base's frozen linears use a bf16 copy of their weights (log-probs move by bf16 rounding,
    gradients still reach every LoRA weight); the fp32 weights never change, and afterwards the model computes
    exactly what it did before."""
    import torch
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.methods.dpo import _bf16_frozen_linears

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    policy, batch = trainer.model, model_call(batch_of(trainer))
    weights = {name: p.detach().clone() for name, p in policy.named_parameters()}
    _, fp32_logps, fp32_grads = log_probs_and_grads(policy, policy, batch)

    output = policy.get_output_embeddings()
    base_linears = [m for n, m in policy.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]
    assert output in base_linears and not any("forward" in vars(m) for m in base_linears)
    with _bf16_frozen_linears(policy) as patched:
        assert patched == [m for m in base_linears if m is not output]  # all but the output embedding
        assert [m for m in base_linears if "forward" not in vars(m)] == [output]
        _, bf16_logps, bf16_grads = log_probs_and_grads(policy, policy, batch)
    assert not any("forward" in vars(m) for m in base_linears)

    assert not torch.equal(bf16_logps, fp32_logps)  # it did multiply in bf16
    torch.testing.assert_close(bf16_logps, fp32_logps, rtol=0.02, atol=0.5)
    assert set(bf16_grads) == set(fp32_grads) and any("lora_A" in n for n in bf16_grads)
    for name, grad in fp32_grads.items():
        assert torch.nn.functional.cosine_similarity(bf16_grads[name].flatten(), grad.flatten(), dim=0) > 0.95, name
    for name, p in policy.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), weights[name]), name
    _, again, _ = log_probs_and_grads(policy, policy, batch)
    assert torch.equal(again, fp32_logps)


def test_bf16_reference_runs_under_autocast_on_the_cached_weights(tiny_model: Path, tmp_path: Path) -> None:
    """With a bf16 base the reference log-probs are computed under a bf16 autocast, where each frozen linear computes
    exactly what autocast's own linear would, from its cached bf16 copy (bf16 out); the policy's log-probs keep their
    fp32 activations, and without the flag the reference is computed as before."""
    import torch
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.methods.dpo import _bf16_frozen_linears

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tokenizer = load_tokenizer(str(tiny_model))
    plain = preference_trainer(model, tokenizer, PROMPTS, tmp_path / "plain")
    batch = batch_of(plain)
    with torch.no_grad():
        fp32_ref = plain.compute_ref_log_probs(plain.model, batch)
    trainer = preference_trainer(model, tokenizer, PROMPTS, tmp_path / "bf16", bf16_reference=True)
    with _bf16_frozen_linears(trainer.model):
        linear = next(m for m in trainer.model.modules() if type(m) is torch.nn.Linear and "forward" in vars(m))
        x = torch.randn(3, linear.in_features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, autocasts = linear(x), type(linear).forward(linear, x)
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, autocasts)
        with torch.no_grad():  # from the cached copy: the fp32 weight is not read
            saved = linear.weight.clone()
            linear.weight.zero_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(linear(x), ours)
            linear.weight.copy_(saved)
        assert linear(x).dtype == torch.float32  # outside autocast: fp32 out, as before
        bf16_ref = trainer.compute_ref_log_probs(trainer.model, batch)
        again = plain.compute_ref_log_probs(plain.model, batch)  # no autocast: the bf16 linears' fp32 activations
    for bf16_side, fp32_side, unflagged in zip(bf16_ref, fp32_ref, again, strict=True):
        assert not torch.equal(bf16_side, fp32_side) and not torch.equal(bf16_side, unflagged)
        torch.testing.assert_close(bf16_side, fp32_side, rtol=0.02, atol=0.5)


def test_the_head_scores_only_labelled_positions_with_the_same_results(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU TRL's fused head projects every position (prompt and padding too); within
    `_score_labelled_positions_only` it projects only the labelled ones, as it does under Triton: the same log-probs,
    per-token fields and gradients, from fewer rows through the head. Afterwards TRL's own choice is back."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from ml.loading import load_tokenizer
    from trainers.methods.dpo import _score_labelled_positions_only, _SharedPrefix

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    batch = model_call(batch_of(trainer))
    packed = _SharedPrefix.wrap(trainer, trainer.model)
    head_rows: list[int] = []
    head = trl_utils._ChunkedLogProbFunction

    class Counted:
        @staticmethod
        def apply(hidden: Any, *rest: Any) -> Any:
            head_rows.append(hidden.shape[0])
            return head.apply(hidden, *rest)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counted)
    own_choice = trl_utils._use_triton
    every, every_seq, every_grads = log_probs_and_grads(trainer.model, packed, batch)
    with _score_labelled_positions_only() as applied:
        labelled, labelled_seq, labelled_grads = log_probs_and_grads(trainer.model, packed, batch)
    assert applied and trl_utils._use_triton is own_choice
    all_rows, labelled_rows = head_rows
    assert labelled_rows == int(every.label_mask.sum()) < all_rows
    torch.testing.assert_close(labelled_seq, every_seq, rtol=0, atol=TOLERANCE)
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(labelled, field), getattr(every, field), rtol=0, atol=TOLERANCE)
    assert labelled_grads.keys() == every_grads.keys() and every_grads
    for name, grad in every_grads.items():
        torch.testing.assert_close(labelled_grads[name], grad, rtol=1e-3, atol=1e-5)


def addmm_nodes(tensor: Any) -> int:
    """AddmmBackward0 nodes in the autograd graph behind `tensor`."""
    seen, stack, count = set(), [tensor.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == "AddmmBackward0"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count


def test_fused_lora_add_gives_peft_sum_and_gradients(tiny_model: Path, tmp_path: Path) -> None:
    """Within `_fused_lora_add` each LoRA layer adds its update in one addmm (it really does: one Addmm node per LoRA
    layer in the graph, none without): the policy's log-probs and every LoRA gradient are PEFT's own; with the adapter
    disabled (the reference) PEFT's forward runs; afterwards the layers are PEFT's again."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.methods.dpo import _fused_lora_add

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    policy = trainer.model
    batch = model_call(batch_of(trainer))
    layers = [m for m in policy.modules() if isinstance(m, LoraLinear)]
    peft_out, peft_seq, peft_grads = log_probs_and_grads(policy, policy, batch)
    with _fused_lora_add(policy) as covered:
        fused_out, fused_seq, fused_grads = log_probs_and_grads(policy, policy, batch)
        with torch.no_grad(), policy.disable_adapter():
            reference_fused = policy(**batch).log_probs
    with torch.no_grad(), policy.disable_adapter():
        reference = policy(**batch).log_probs
    assert covered == len(layers) > 0
    assert addmm_nodes(fused_out.log_probs) == len(layers) and addmm_nodes(peft_out.log_probs) == 0
    assert not any("forward" in vars(m) for m in layers)
    torch.testing.assert_close(fused_seq, peft_seq, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(reference_fused, reference, rtol=0, atol=0)
    assert fused_grads.keys() == peft_grads.keys() and any("lora_A" in k for k in peft_grads)
    for name, grad in peft_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_a_bf16_run_pages_out_the_mapped_fp32_weights_and_reads_them_back(tiny_model: Path, tmp_path: Path) -> None:
    """With a bf16 base the loop reads only the frozen layers' bf16 copies: their fp32 weights, mapped from the
    checkpoint, go back to the kernel for the run and read back afterwards exactly as they were."""
    import torch
    from transformers import AutoModelForCausalLM

    from core import host_memory
    from ml.loading import load_tokenizer
    from trainers.config import DPORunConfig
    from trainers.methods import dpo

    if host_memory._libc() is None:
        pytest.skip("Linux with glibc only")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    output = model.get_output_embeddings()
    frozen = [m.weight for m in model.modules() if type(m) is torch.nn.Linear and m is not output]
    mappings = host_memory._file_mappings()
    assert all(any(low <= w.data_ptr() < high for low, high in mappings) for w in frozen)  # transformers maps the file
    before = [w.detach().clone() for w in frozen]
    rng = random.Random(0)
    rows = []
    for i in range(8):
        _, chosen, rejected = style_pair(rng, "type_hints", True)
        rows.append({"prompt": PROMPTS[i % len(PROMPTS)], "chosen": chosen, "rejected": rejected})
    config = DPORunConfig(seed=0, max_steps=2, batch_size=4, cpu_bf16_base="on")

    trained = dpo.train(config, model, load_tokenizer(str(tiny_model)), rows, tmp_path)

    assert trained.metrics["steps"] == 2 and trained.metrics["cpu_bf16_base"] is True
    total_mb = sum(w.numel() * w.element_size() for w in frozen) / 2**20
    assert trained.metrics["paged_out_mb"] >= 0.7 * total_mb  # whole pages of each weight
    assert all(torch.equal(w.detach(), saved) for w, saved in zip(frozen, before, strict=True))


def test_auto_bf16_base_needs_native_bf16_and_a_wide_enough_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from transformers import LlamaConfig

    from trainers.methods import dpo

    def model(hidden: int) -> Any:
        return SimpleNamespace(config=LlamaConfig(hidden_size=hidden, num_attention_heads=4))

    narrow, wide = model(dpo.CPU_BF16_MIN_HIDDEN - 64), model(dpo.CPU_BF16_MIN_HIDDEN)
    for native in (True, False):
        monkeypatch.setattr(dpo, "native_bf16_cpu", lambda native=native: native)
        assert dpo._cpu_bf16_base("auto", wide) is native
        assert dpo._cpu_bf16_base("auto", narrow) is False
        assert dpo._cpu_bf16_base("on", narrow) is True and dpo._cpu_bf16_base("off", wide) is False


def test_the_bf16_reference_head_multiplies_one_bf16_copy_with_the_same_log_probs(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the bf16 reference's autocast, TRL's head gets one bf16 copy of the output embedding (instead of casting
    the fp32 weight per tile) and gives the same log-probs bit for bit; the policy's fp32 head is left as it is, and
    TRL's function is back after."""
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.methods.dpo import _bf16_frozen_linears, _bf16_head_under_autocast

    seen: list[tuple[Any, int]] = []
    trl_function = trl_utils._ChunkedLogProbFunction

    class Recording:
        @staticmethod
        def apply(hidden: Any, weight: Any, *args: Any) -> Any:
            seen.append((weight.dtype, weight.data_ptr()))
            return trl_function.apply(hidden, weight, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Recording)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path, bf16_reference=True)
    batch = batch_of(trainer)
    head = model.get_output_embeddings().weight
    with _bf16_frozen_linears(trainer.model):
        with torch.no_grad():
            casting_per_tile = trainer.compute_ref_log_probs(trainer.model, batch)
        assert seen == [(torch.float32, head.data_ptr())]
        with _bf16_head_under_autocast(model) as swapped, torch.no_grad():
            assert swapped and trl_utils._ChunkedLogProbFunction is not Recording
            one_copy = trainer.compute_ref_log_probs(trainer.model, batch)
            again = trainer.compute_ref_log_probs(trainer.model, batch)
            trainer.model(**model_call(batch))  # the policy's forward: no autocast, the fp32 head
        copies = {ptr for dtype, ptr in seen[1:3]}
        assert [dtype for dtype, _ in seen[1:]] == [torch.bfloat16, torch.bfloat16, torch.float32]
        assert len(copies) == 1 and head.data_ptr() not in copies and seen[3][1] == head.data_ptr()
    assert trl_utils._ChunkedLogProbFunction is Recording
    for ours, theirs, repeated in zip(one_copy, casting_per_tile, again, strict=True):
        assert torch.equal(ours, theirs) and torch.equal(ours, repeated)
