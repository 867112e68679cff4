"""What a serving backend is, and the in-process one: transformers + PEFT, one base model loaded once per process,
adapter versions loaded, switched and evicted while it serves.

torch, transformers and peft are imported inside the functions that use them: the collector imports this module's
types at start and must not pay for them. All model state (the active adapter, merged weights) is global to the
model, so one lock per base model serialises generation; requests run in the threadpool, off the event loop."""

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from core import artifacts
from core.errors import EditloopError, InvalidInput
from core.settings import Settings

FinishReason = Literal["stop", "length"]
OnText = Callable[[str], None]


class BackendUnavailable(EditloopError):
    """The serving backend failed or refused a request for a reason that is not the caller's (an HTTP 502)."""

    code = "backend_unavailable"


@dataclass(frozen=True, slots=True)
class Adapter:
    """One adapter version as a backend loads it. `key` is unique and never reused for other weights (project,
    version and manifest hash), so a backend never reloads a name in place."""

    key: str
    name: str
    path: Path
    manifest_sha256: str


@dataclass(frozen=True, slots=True)
class Target:
    base_model: str
    base_revision: str | None
    adapter: Adapter | None  # None: the base model alone


@dataclass(frozen=True, slots=True)
class Params:
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_tokens: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True, slots=True)
class Result:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class Backend(Protocol):
    name: str

    def generate(self, target: Target, params: Params, on_text: OnText | None, cancelled: threading.Event) -> Result:
        """Generate one completion; `on_text` gets each new piece of text (stop sequences already cut) as it comes.
        Blocking: call it from a worker thread."""
        ...


class StopText:
    """Cuts streamed text at the first stop sequence, holding back a tail that could still become one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        found = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.buffer, self.stopped = self.buffer[: min(found)], "", True
            return out
        keep = min(self.hold, len(self.buffer))
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


def verify(adapter: Adapter) -> None:
    """Never serve weights that are not the version's: the manifest's hash and every file's are checked on load."""
    try:
        artifacts.verify(adapter.path, adapter.manifest_sha256)
    except artifacts.ChecksumMismatch as exc:
        raise BackendUnavailable(f"version {adapter.name}: its artifacts fail verification: {exc}") from exc


class _Engine:
    """One base model and the adapters loaded on it. Callers hold `lock` around `use()` and generation.

    PEFT wraps every adapted layer in a LoRA module whose Python overhead, on a small model, costs more than the LoRA
    arithmetic: even merged in place (`merge_adapter`) a tiny model generated well below the speed of a plain merged
    copy (benchmarks/README.md, serve). So with `merge` on, `serving` is a plain model that PEFT never wraps, and
    `source` a PeftModel over a copy of the base that holds the loaded adapters unmerged. Serving a version writes the
    base plus its LoRA delta (PEFT's own `get_delta_weight`, as `merge_adapter` adds) into the plain model's adapted
    layers; the base is served by writing the base weights back. That costs a second copy of the adapted weights in
    memory. Adapters that are not plain LoRA on linear layers (DoRA, modules_to_save, biases) are served unmerged from
    `source`."""

    def __init__(self, base_model: str, revision: str | None, settings: Settings) -> None:
        from ml.loading import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(base_model, revision)
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"  # (only the CPU path has run here)
        self.serving: Any = load_model(base_model, revision).eval().to(self.device)
        self.context = int(getattr(self.serving.config, "max_position_embeddings", 0) or 0)
        self.source: Any = None  # the PeftModel, once the first adapter is loaded
        self.resident: OrderedDict[str, None] = OrderedDict()  # adapter keys, least recently used first
        self.applied: str | None = None  # the adapter whose delta the serving model's weights hold
        self.max_adapters = settings.serving_max_adapters
        self.merge = settings.serving_merge_hot_adapter
        self.prompt_lookup = settings.serving_prompt_lookup_tokens
        self.lock = threading.Lock()
        self._layers: list[tuple[Any, Any]] = []  # (LoRA layer in source, the same layer in serving)

    def _load(self, adapter: Adapter) -> None:
        import copy

        from peft import PeftModel

        verify(adapter)
        if self.source is None:
            # Unmerged serving wraps the model itself; merged serving keeps it plain and wraps a copy.
            body = copy.deepcopy(self.serving) if self.merge else self.serving
            self.source = PeftModel.from_pretrained(body, str(adapter.path), adapter_name=adapter.key).eval()
        else:
            self.source.load_adapter(str(adapter.path), adapter_name=adapter.key)
        self.resident[adapter.key] = None
        while len(self.resident) > self.max_adapters:
            evicted, _ = self.resident.popitem(last=False)
            if self.applied == evicted:
                self._apply(None)
            self.source.delete_adapter(evicted)
        self._layers = self._lora_layers() if self.merge else []

    def _lora_layers(self) -> list[tuple[Any, Any]]:
        from peft.tuners.lora import LoraLayer

        prefix = "base_model.model."
        return [
            (module, self.serving.get_submodule(name.removeprefix(prefix)))
            for name, module in self.source.named_modules()
            if isinstance(module, LoraLayer)
        ]

    def _mergeable(self, key: str) -> bool:
        from peft.tuners.lora import Linear

        config = self.source.peft_config[key]
        plain = not getattr(config, "use_dora", False) and not config.modules_to_save and config.bias == "none"
        return plain and all(isinstance(layer, Linear) for layer, _ in self._layers if key in layer.lora_A)

    def _apply(self, key: str | None) -> None:
        """Write base + the adapter's delta (or the base alone) into the serving model's adapted layers."""
        import torch

        if self.applied == key:
            return
        with torch.no_grad():
            for layer, target in self._layers:
                weight = layer.get_base_layer().weight
                if key is not None and key in layer.lora_A:
                    weight = weight + layer.get_delta_weight(key)
                target.weight.copy_(weight)
        self.applied = key

    @contextlib.contextmanager
    def use(self, adapter: Adapter | None) -> Iterator[Any]:
        """The model to generate with, set to `adapter` (or to the base) for the duration."""
        if adapter is None:
            if self.merge or self.source is None:
                self._apply(None)
                yield self.serving
            else:
                with self.source.disable_adapter():
                    yield self.source
            return
        if adapter.key in self.resident:
            self.resident.move_to_end(adapter.key)
        else:
            self._load(adapter)
        if self.merge and self._mergeable(adapter.key):
            self._apply(adapter.key)
            yield self.serving
            return
        self.source.set_adapter(adapter.key)
        yield self.source


class _Streamer:
    """A transformers streamer: decodes the new tokens as they come, cuts at stop sequences, passes text on."""

    def __init__(self, tokenizer: Any, prompt_length: int, stops: StopText, on_text: OnText | None) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stops = stops
        self.on_text = on_text
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already fed on
        self.text = ""
        self.seen_prompt = False

    def put(self, value: Any) -> None:
        ids = value.reshape(-1).tolist()
        if not self.seen_prompt:  # generate() first puts the prompt
            self.seen_prompt = True
            return
        self.ids.extend(ids)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if decoded.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return
        self._emit(self.stops.feed(decoded[self.sent :]))
        self.sent = len(decoded)

    def end(self) -> None:
        self._emit(self.stops.flush())

    def _emit(self, piece: str) -> None:
        if piece:
            self.text += piece
            if self.on_text is not None:
                self.on_text(piece)


class InProcessBackend:
    """transformers + PEFT in this process. Engines (one per base model) are created on first use."""

    name = "inprocess"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engines: dict[tuple[str, str | None], _Engine] = {}
        self._loading = threading.Lock()

    def engine(self, base_model: str, revision: str | None) -> _Engine:
        key = (base_model, revision)
        with self._loading:
            engine = self._engines.get(key)
            if engine is None:
                from ml.environment import set_threads

                try:
                    set_threads()
                    engine = _Engine(base_model, revision, self.settings)
                except ModuleNotFoundError as exc:
                    raise BackendUnavailable(
                        f"the in-process backend needs the ML stack ({exc.name} is not installed): install the"
                        " `train` extra, or set EDITLOOP_SERVING_BACKEND=vllm"
                    ) from exc
                except OSError as exc:
                    raise BackendUnavailable(f"base model {base_model!r} could not be loaded: {exc}") from exc
                self._engines[key] = engine
            return engine

    def prompt_text(self, engine: _Engine, params: Params) -> str:
        if params.messages is None:
            return params.prompt or ""
        if not getattr(engine.tokenizer, "chat_template", None):
            raise InvalidInput("messages: the base model has no chat template; use /v1/completions")
        return str(engine.tokenizer.apply_chat_template(params.messages, tokenize=False, add_generation_prompt=True))

    def generate(self, target: Target, params: Params, on_text: OnText | None, cancelled: threading.Event) -> Result:
        # The engine first: it imports transformers under `_loading`. Two threads importing transformers' lazy
        # modules at once got "cannot import name 'GenerationConfig'" (first requests of concurrent editors).
        engine = self.engine(target.base_model, target.base_revision)
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        tokenizer = engine.tokenizer
        encoded = tokenizer(self.prompt_text(engine, params), return_tensors="pt").to(engine.device)
        prompt_tokens = int(encoded["input_ids"].shape[1])
        if engine.context and prompt_tokens + params.max_tokens > engine.context:
            raise InvalidInput(
                f"prompt: {prompt_tokens} tokens plus max_tokens {params.max_tokens} exceed the model's context of"
                f" {engine.context} tokens"
            )
        stops = StopText(params.stops)
        streamer = _Streamer(tokenizer, prompt_tokens, stops, on_text)

        class _Stop(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = stops.stopped or cancelled.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=None,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            prompt_lookup_num_tokens=engine.prompt_lookup or None,
        )
        with engine.lock, engine.use(target.adapter) as model, torch.inference_mode():
            if sample and params.seed is not None:
                torch.manual_seed(params.seed)
            output = model.generate(
                **encoded,
                generation_config=config,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Stop()]),
            )
        new = output[0, prompt_tokens:].tolist()
        eos = tokenizer.eos_token_id
        hit_eos = eos is not None and eos in new
        if hit_eos:
            new = new[: new.index(eos)]
        reason: FinishReason = "stop" if stops.stopped or hit_eos or len(new) < params.max_tokens else "length"
        return Result(streamer.text, reason, prompt_tokens, len(new))
