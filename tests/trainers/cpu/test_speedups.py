"""The switch of DPO's CPU speedups: on for the run only, off leaves TRL as it is; a bf16 base pages its mapped fp32
weights out and back, and `auto` asks for native bf16 and a wide enough model."""

import random
from pathlib import Path
from typing import Any

import pytest

from demo.corpus import style_pair
from tests.trainers.cpu.pairs import PROMPTS

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_a_bf16_run_pages_out_the_mapped_fp32_weights_and_reads_them_back(tiny_model: Path, tmp_path: Path) -> None:
    """With a bf16 base the loop reads only the frozen layers' bf16 copies: their fp32 weights, mapped from the
    checkpoint, go back to the kernel for the run and read back afterwards exactly as they were."""
    import torch
    from transformers import AutoModelForCausalLM

    from ml.loading import load_tokenizer
    from trainers.config import DPORunConfig
    from trainers.cpu import host_memory
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

    from trainers.cpu import speedups

    def model(hidden: int) -> Any:
        return SimpleNamespace(config=LlamaConfig(hidden_size=hidden, num_attention_heads=4))

    narrow, wide = model(speedups.CPU_BF16_MIN_HIDDEN - 64), model(speedups.CPU_BF16_MIN_HIDDEN)
    for native in (True, False):
        monkeypatch.setattr(speedups, "native_bf16_cpu", lambda native=native: native)
        assert speedups._cpu_bf16_base("auto", wide) is native
        assert speedups._cpu_bf16_base("auto", narrow) is False
        assert speedups._cpu_bf16_base("on", narrow) is True and speedups._cpu_bf16_base("off", wide) is False


def test_the_switch_applies_the_speedups_for_the_run_only_and_off_leaves_trl_as_it_is(tiny_model: Path) -> None:
    """On (the CPU), the run gets a DPOTrainer subclass and TRL patched for the duration; off, TRL's DPOTrainer, whole
    batches and TRL untouched, whatever cpu_bf16_base says."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer
    from trl.trainer import utils as trl_utils

    from trainers.config import DPORunConfig
    from trainers.cpu.speedups import DPOSpeedups

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_choice = trl_utils._use_triton

    on = DPOSpeedups(DPORunConfig(cpu_bf16_base="off"), model)
    with on.applied(model) as trainer_class:
        assert issubclass(trainer_class, DPOTrainer) and trainer_class is not DPOTrainer
        assert trl_utils._use_triton is not trl_choice
    assert trl_utils._use_triton is trl_choice
    assert on.metrics == {"cpu_speedups": True, "cpu_bf16_base": False, "paged_out_mb": 0.0}

    off = DPOSpeedups(DPORunConfig(cpu_speedups=False, cpu_bf16_base="on"), model)
    with off.applied(model) as trainer_class:
        assert trainer_class is DPOTrainer and trl_utils._use_triton is trl_choice
        assert not any("forward" in vars(module) for module in model.modules())
    assert off.micro_batch(8, model, None, []) == 8
    assert off.metrics == {"cpu_speedups": False, "cpu_bf16_base": False, "paged_out_mb": 0.0}
