"""The bootstrapped model: saved atomically in a form transformers loads, trained enough that the loss fell and
greedy samples are Python, reproducible from its seed, and never written over someone else's directory."""

import ast
import json
import random
from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.settings import Settings
from demo.bootstrap import METADATA, BootstrapConfig, bootstrap, sample
from demo.corpus import corpus, prompt_for, sample_function
from demo.style import AXES

# 32 prompts: with 8, the bar on the share that parses made the test a coin flip.
PROMPTS = [prompt_for(sample_function(random.Random(f"held-out-{i}"))) for i in range(32)]


def test_output_loads_with_the_auto_classes(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", METADATA):
        assert (tiny_model / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == model.config.vocab_size == 2048
    generation = model.generation_config
    assert (generation.pad_token_id, generation.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    # the tokenizer is the BPE it was trained as (not swapped for another class by model type) and round-trips
    doc = corpus(1, seed=99)[0]
    assert tokenizer.decode(tokenizer(doc)["input_ids"]) == doc
    messages = [{"role": "user", "content": "hi"}]
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_metadata_records_the_run(tiny_model: Path) -> None:
    meta = json.loads((tiny_model / METADATA).read_text())
    assert meta["config"]["documents"] == 6000 and meta["seed"] == 0
    assert meta["steps"] > 0 and meta["seconds"] > 0
    assert meta["style_axes"] == {axis: list(values) for axis, values in AXES.items()}
    assert {"torch", "transformers", "trl", "tokenizers"} <= set(meta["library_versions"])
    # the loss starts near ln(vocab) = 7.6 for random weights and must have fallen well below it
    assert meta["initial_loss"] > 7
    assert meta["final_loss"] < 1.5 and meta["held_out_loss"] < 1.5


def test_greedy_samples_are_python(tiny_model: Path) -> None:
    completions = sample(tiny_model, PROMPTS, max_new_tokens=128)
    assert len(completions) == len(PROMPTS) and all(c.strip() for c in completions)
    parsed = 0
    for completion in completions:
        try:
            ast.parse(completion)
        except SyntaxError:
            continue
        parsed += completion.lstrip().startswith("def ")  # an empty or comment-only completion parses too
    assert parsed >= 0.4 * len(PROMPTS), (parsed, completions)


def test_refuses_to_write_over_a_directory(tmp_path: Path, tiny_model: Path) -> None:
    config = BootstrapConfig(documents=10, max_steps=1)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a bootstrap output"):
        bootstrap(tmp_path, config)
    with pytest.raises(ValueError, match="overwrite=True"):
        bootstrap(tiny_model, config)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_same_seed_same_model_and_overwrite_replaces(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    config = BootstrapConfig(documents=300, max_steps=3, seconds=120, batch_size=4, max_length=64)
    calls = []
    out = tmp_path / "model"
    first = bootstrap(out, config, progress=lambda step, total, info: calls.append((step, total, info)))
    weights = load_file(out / "model.safetensors")
    assert [c[0] for c in calls if not c[2].get("done")] == [1, 2, 3] and all(c[1] == 3 for c in calls)
    assert first["steps"] == 3 and first["stopped_by"] == "steps"

    second = bootstrap(out, config, overwrite=True)
    assert second["created_at"] >= first["created_at"] and second["losses"] == first["losses"]
    again = load_file(out / "model.safetensors")
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directories left behind


def test_the_demo_reuses_its_rented_model_and_rebuilds_it_when_the_recipe_changed(tmp_path: Path) -> None:
    """`editloop demo --upstream` builds its rented model once; a later demo reuses it unless RENTED_MODEL changed."""
    from rich.console import Console

    from demo.run import ensure_model, rented_model_dir

    small = BootstrapConfig(documents=200, max_steps=2, seconds=120, batch_size=2, max_length=64)
    path = tmp_path / "rented"
    console = Console(record=True, width=200)

    def weights_file() -> int:
        return (path / "model.safetensors").stat().st_ino

    ensure_model(path, console, small, "rented model", same_config=True)
    built = weights_file()
    assert "built now" in console.export_text()
    ensure_model(path, console, small, "rented model", same_config=True)
    assert weights_file() == built and "built by an earlier demo" in console.export_text()
    changed = BootstrapConfig(documents=200, max_steps=3, seconds=120, batch_size=2, max_length=64)
    ensure_model(path, console, changed, "rented model", same_config=False)  # the base's rule: any output will do
    assert weights_file() == built
    ensure_model(path, console, changed, "rented model", same_config=True)
    assert weights_file() != built and json.loads((path / METADATA).read_text())["steps"] == 3

    with pytest.raises(InvalidInput, match="not a bootstrap output"):
        rented_model_dir(Settings(data_dir=tmp_path / "data"), tmp_path, console)
    assert rented_model_dir(Settings(data_dir=tmp_path / "data"), path, console) == path
