"""The production backend: a vLLM OpenAI server started with LoRA enabled, adapters loaded through its runtime API.

The server is started with `--enable-lora` (and `--max-lora-rank` at least our adapters' rank) and the environment
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Each version is loaded under its own immutable name
(`p{project}-{version}-{manifest hash}`) with `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`, never
reloaded in place: vLLM answers 400 for a name already loaded, which here means another gateway process loaded the
same weights first. A completion for a name vLLM does not know is a 404 (it restarted and lost its runtime adapters,
or another gateway evicted it): the adapter is loaded again and the request retried once. Generation always streams
from vLLM (`stream_options.include_usage` gives the token counts), so a streaming client gets tokens as vLLM makes
them and a non-streaming one the joined text; vLLM applies the stop sequences and the chat template itself."""

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx

from core.settings import Settings
from serving.backend import Adapter, BackendUnavailable, FinishReason, OnText, Params, Result, Target, verify


def _message(response: httpx.Response) -> str:
    """The error message of a vLLM error body: `{"error": {"message": ...}}` (newer) or `{"message": ...}`."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            return str(inner.get("message", inner))
        return str(body.get("message", body))
    return str(body)[:500]


class _Gone(Exception):
    """vLLM does not know the model name (404)."""


class VLLMBackend:
    name = "vllm"

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        if not settings.vllm_url:
            raise BackendUnavailable("EDITLOOP_VLLM_URL is not set; the vllm backend needs a vLLM server")
        headers = {"Authorization": f"Bearer {settings.vllm_api_key}"} if settings.vllm_api_key else {}
        self.client = httpx.Client(
            base_url=settings.vllm_url.rstrip("/"),
            headers=headers,
            timeout=settings.vllm_timeout_s,
            transport=transport,
        )
        self.settings = settings
        self.loaded: OrderedDict[str, None] = OrderedDict()  # names this process loaded, least recently used first
        self._base: str | None = None
        self._lock = threading.Lock()

    def base_name(self) -> str:
        """The served base model's name: the model card without a `parent` (LoRA cards name their base there)."""
        if self._base is None:
            response = self._call("GET", "/v1/models")
            cards = [c for c in response.json().get("data", []) if not c.get("parent")]
            if not cards:
                raise BackendUnavailable("vLLM /v1/models lists no base model")
            self._base = str(cards[0]["id"])
        return self._base

    def lora_path(self, adapter: Adapter) -> str:
        """The adapter directory as the vLLM server sees it (the artifact store mounted at another path, maybe)."""
        mount = self.settings.vllm_adapter_dir
        if mount is None:
            return str(adapter.path)
        return str(Path(mount) / adapter.path.resolve().relative_to(self.settings.artifact_root))

    def ensure_loaded(self, adapter: Adapter) -> str:
        with self._lock:
            if adapter.key in self.loaded:
                self.loaded.move_to_end(adapter.key)
                return adapter.key
            verify(adapter)  # vLLM would serve whatever it finds at the path
            response = self.client.post(
                "/v1/load_lora_adapter", json={"lora_name": adapter.key, "lora_path": self.lora_path(adapter)}
            )
            if response.status_code != 200 and not (
                response.status_code == 400 and "already been loaded" in _message(response)
            ):
                raise BackendUnavailable(
                    f"vLLM refused to load {adapter.name}: {response.status_code} {_message(response)}"
                )
            self.loaded[adapter.key] = None
            while len(self.loaded) > self.settings.serving_max_adapters:
                evicted, _ = self.loaded.popitem(last=False)
                gone = self.client.post("/v1/unload_lora_adapter", json={"lora_name": evicted})
                if gone.status_code not in (200, 404):  # 404: unloaded already, by another gateway
                    raise BackendUnavailable(f"vLLM refused to unload {evicted}: {_message(gone)}")
            return adapter.key

    def forget(self, adapter: Adapter) -> None:
        with self._lock:
            self.loaded.pop(adapter.key, None)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"vLLM at {self.settings.vllm_url}: {exc}") from exc
        if response.status_code != 200:
            raise BackendUnavailable(f"vLLM {method} {path}: {response.status_code} {_message(response)}")
        return response

    def generate(self, target: Target, params: Params, on_text: OnText | None, cancelled: threading.Event) -> Result:
        try:
            for attempt in range(2):
                model = self.ensure_loaded(target.adapter) if target.adapter is not None else self.base_name()
                try:
                    return self._generate(model, params, on_text, cancelled)
                except _Gone:
                    if target.adapter is None or attempt == 1:
                        raise BackendUnavailable(f"vLLM does not serve {model!r}") from None
                    self.forget(target.adapter)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"vLLM at {self.settings.vllm_url}: {exc}") from exc
        raise AssertionError("unreachable")

    def _generate(self, model: str, params: Params, on_text: OnText | None, cancelled: threading.Event) -> Result:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stops:
            body["stop"] = list(params.stops)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.messages is not None:
            path, body["messages"] = "/v1/chat/completions", params.messages
        else:
            path, body["prompt"] = "/v1/completions", params.prompt
        text: list[str] = []
        finish: FinishReason = "length"
        usage: dict[str, Any] = {}
        with self.client.stream("POST", path, json=body) as response:
            if response.status_code == 404:
                response.read()
                raise _Gone(_message(response))
            if response.status_code != 200:
                response.read()
                raise BackendUnavailable(f"vLLM {path}: {response.status_code} {_message(response)}")
            for line in response.iter_lines():
                if cancelled.is_set():
                    break
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:  # an error after the stream started
                    raise BackendUnavailable(f"vLLM {path}: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                    if piece:
                        text.append(piece)
                        if on_text is not None:
                            on_text(piece)
                    if choice.get("finish_reason"):
                        finish = "length" if choice["finish_reason"] == "length" else "stop"
        return Result("".join(text), finish, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
