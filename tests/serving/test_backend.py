"""The in-process backend: a served adapter says exactly what PEFT says with it, the base what the plain model says;
adapters are evicted and reloaded; stop sequences cut streamed text; prompt lookup changes no greedy output;
weights that fail their checksums are never served; without the ML stack it says what to install."""

import sys
import threading
from pathlib import Path

import pytest

from core import artifacts
from core.settings import Settings
from serving.backend import Adapter, BackendUnavailable, InProcessBackend, Params, StopText, Target

from .conftest import lora_dir

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

PROMPT = "def add(a, b):\n    return"


@pytest.fixture(scope="module")
def adapters(serving_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Adapter]:
    root = tmp_path_factory.mktemp("adapters")
    out = []
    for seed in (1, 2):
        staging = artifacts.staging_dir(root, "a")
        lora_dir(serving_model, staging, seed)
        artifacts.publish(staging, root / f"v{seed}", {"name": f"v{seed}"})
        out.append(Adapter(f"k{seed}", f"v{seed}", root / f"v{seed}", artifacts.manifest_sha256(root / f"v{seed}")))
    return out


def greedy(backend: InProcessBackend, model: Path, adapter: Adapter | None, tokens: int = 16, **kw: object) -> str:
    params = Params(PROMPT, None, tokens, 0.0, 1.0, tuple(kw.get("stops", ())), None)  # type: ignore[arg-type]
    return backend.generate(Target(str(model), None, adapter), params, None, threading.Event()).text


def reference(model: Path, adapter: Adapter | None, tokens: int = 16) -> str:
    """What PEFT itself generates: the adapter merged and unloaded into a fresh model (or the plain base)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    plain = AutoModelForCausalLM.from_pretrained(model)
    if adapter is not None:
        plain = PeftModel.from_pretrained(plain, str(adapter.path)).merge_and_unload()
    enc = tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        out = plain.eval().generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=1, eos_token_id=0)
    return str(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def test_served_adapters_match_peft_and_switch_back_and_forth(serving_model: Path, adapters: list[Adapter]) -> None:
    expected = {a: reference(serving_model, a) for a in (None, *adapters)}
    assert len(set(expected.values())) == 3
    merged = InProcessBackend(Settings(serving_max_adapters=1, serving_prompt_lookup_tokens=0))
    unmerged = InProcessBackend(Settings(serving_merge_hot_adapter=False, serving_prompt_lookup_tokens=10))
    for backend in (merged, unmerged):
        for adapter in (None, adapters[0], adapters[1], None, adapters[0], adapters[1]):
            assert greedy(backend, serving_model, adapter) == expected[adapter], (backend.settings, adapter)
    engine = merged.engine(str(serving_model), None)
    assert list(engine.resident) == [adapters[1].key]  # one resident at most: the others were evicted
    assert engine.source.peft_config.keys() == {adapters[1].key}


def test_stop_sequences_cut_streamed_text(serving_model: Path, adapters: list[Adapter]) -> None:
    backend = InProcessBackend(Settings())
    full = greedy(backend, serving_model, adapters[0], tokens=24)
    stop = full[10:13]
    pieces: list[str] = []
    params = Params(PROMPT, None, 24, 0.0, 1.0, (stop, "\x00never"), None)
    result = backend.generate(Target(str(serving_model), None, adapters[0]), params, pieces.append, threading.Event())
    assert result.text == "".join(pieces) == full[: full.index(stop)] and result.finish_reason == "stop"

    cut = StopText(("END", "\n\n"))
    assert [cut.feed(t) for t in ("ab", "cE", "N", "xD", "more")] == ["", "ab", "c", "EN", "xDmo"]
    assert not cut.stopped and cut.flush() == "re"
    assert cut.feed("\n") == "" and cut.feed("\nafter") == "" and cut.stopped and cut.flush() == ""


def test_weights_that_fail_verification_are_not_served(
    serving_model: Path, adapters: list[Adapter], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "v1"
    shutil.copytree(adapters[0].path, copy)
    (copy / "adapter_model.safetensors").write_bytes((copy / "adapter_model.safetensors").read_bytes()[:-8] + b"x" * 8)
    tampered = Adapter("tampered", "v1", copy, adapters[0].manifest_sha256)
    with pytest.raises(BackendUnavailable, match="v1: its artifacts fail verification"):
        greedy(InProcessBackend(Settings()), serving_model, tampered)


def test_without_the_ml_stack_the_backend_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if not installed
    with pytest.raises(BackendUnavailable, match=r"\(torch is not installed\): install the `train` extra"):
        InProcessBackend(Settings()).engine("any/model", None)
