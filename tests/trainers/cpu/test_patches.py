"""The patches of torch layers and of TRL's and PEFT's internals behind DPO's CPU speedups: each computes what the
library computes (bit for bit, or within bf16 rounding where it multiplies in bf16), and puts the library back after."""

from pathlib import Path
from typing import Any

import pytest

from tests.trainers.cpu.pairs import PROMPTS, TOLERANCE, batch_of, log_probs_and_grads, model_call, preference_trainer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def testbf16_frozen_linears_multiply_in_bf16_and_restore_the_model(tiny_model: Path, tmp_path: Path) -> None:
    """Inside the context the base's frozen linears use a bf16 copy of their weights (log-probs move by bf16 rounding,
    gradients still reach every LoRA weight); the fp32 weights never change, and afterwards the model computes
    exactly what it did before."""
    import torch
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.cpu.patches import bf16_frozen_linears

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    policy, batch = trainer.model, model_call(batch_of(trainer))
    weights = {name: p.detach().clone() for name, p in policy.named_parameters()}
    _, fp32_logps, fp32_grads = log_probs_and_grads(policy, policy, batch)

    output = policy.get_output_embeddings()
    base_linears = [m for n, m in policy.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]
    assert output in base_linears and not any("forward" in vars(m) for m in base_linears)
    with bf16_frozen_linears(policy) as patched:
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
    from trainers.cpu.patches import bf16_frozen_linears

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tokenizer = load_tokenizer(str(tiny_model))
    plain = preference_trainer(model, tokenizer, PROMPTS, tmp_path / "plain")
    batch = batch_of(plain)
    with torch.no_grad():
        fp32_ref = plain.compute_ref_log_probs(plain.model, batch)
    trainer = preference_trainer(model, tokenizer, PROMPTS, tmp_path / "bf16", bf16_reference=True)
    with bf16_frozen_linears(trainer.model):
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
    `score_labelled_positions_only` it projects only the labelled ones, as it does under Triton: the same log-probs,
    per-token fields and gradients, from fewer rows through the head. Afterwards TRL's own choice is back."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from ml.loading import load_tokenizer
    from trainers.cpu.packing import SharedPrefix
    from trainers.cpu.patches import score_labelled_positions_only

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    batch = model_call(batch_of(trainer))
    packed = SharedPrefix.wrap(trainer, trainer.model)
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
    with score_labelled_positions_only() as applied:
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


def testfused_lora_add_gives_peft_sum_and_gradients(tiny_model: Path, tmp_path: Path) -> None:
    """Within `fused_lora_add` each LoRA layer adds its update in one addmm (it really does: one Addmm node per LoRA
    layer in the graph, none without): the policy's log-probs and every LoRA gradient are PEFT's own; with the adapter
    disabled (the reference) PEFT's forward runs; afterwards the layers are PEFT's again."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.cpu.patches import fused_lora_add

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = preference_trainer(model, load_tokenizer(str(tiny_model)), PROMPTS, tmp_path)
    policy = trainer.model
    batch = model_call(batch_of(trainer))
    layers = [m for m in policy.modules() if isinstance(m, LoraLinear)]
    peft_out, peft_seq, peft_grads = log_probs_and_grads(policy, policy, batch)
    with fused_lora_add(policy) as covered:
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
    from trainers.cpu.patches import bf16_frozen_linears, bf16_head_under_autocast

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
    with bf16_frozen_linears(trainer.model):
        with torch.no_grad():
            casting_per_tile = trainer.compute_ref_log_probs(trainer.model, batch)
        assert seen == [(torch.float32, head.data_ptr())]
        with bf16_head_under_autocast(model) as swapped, torch.no_grad():
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
