"""A vLLM OpenAI server's LoRA contract, replayed from the JSON in fixtures/vllm/ by an httpx MockTransport.

It keeps the state the real server keeps (which LoRA names are loaded) and enforces its rules: both fields to load,
an adapter directory at the path, 400 for a name already loaded, 404 to unload an unknown name, 404 for a
completion naming a model it does not serve. Answers are the recorded bodies, with the names of this call put in."""

import json
from pathlib import Path
from typing import Any

import httpx

FIXTURES = Path(__file__).parent / "fixtures" / "vllm"
RECORDED_LORA = "sql_adapter"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())  # type: ignore[no-any-return]


def _named(value: Any, lora: str) -> Any:
    """The recorded value with the recorded adapter name replaced by this call's."""
    return json.loads(json.dumps(value).replace(RECORDED_LORA, lora))


def _replay(name: str, lora: str = RECORDED_LORA, **replace: Any) -> httpx.Response:
    response = fixture(name)["response"]
    if "text" in response:
        return httpx.Response(response["status"], text=_named(response["text"], lora))
    if "sse" in response:
        lines = []
        for event in response["sse"]:
            data = event if isinstance(event, str) else json.dumps({**_named(event, lora), **replace})
            lines.append(f"data: {data}\n\n")
        return httpx.Response(
            response["status"], content="".join(lines).encode(), headers={"content-type": response["content_type"]}
        )
    return httpx.Response(response["status"], json=_named(response["json"], lora))


class FakeVLLM:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.loras: dict[str, str] = {}  # name -> path
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.base = fixture("models")["response"]["json"]["data"][0]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def restart(self) -> None:
        """A restarted server has lost every adapter loaded at run time."""
        self.loras.clear()

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "Unauthorized"})
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.url.path, body))
        path = request.url.path
        if request.method == "GET" and path == "/v1/models":
            cards = [self.base]
            lora_card = fixture("models")["response"]["json"]["data"][1]
            cards += [{**lora_card, "id": name, "root": p} for name, p in self.loras.items()]
            return httpx.Response(200, json={"object": "list", "data": cards})
        if path == "/v1/load_lora_adapter":
            name, lora_path = body.get("lora_name"), body.get("lora_path")
            if not name or not lora_path:
                return _replay("load_lora_adapter_missing_fields")
            if name in self.loras:
                return _replay("load_lora_adapter_already_loaded", name)
            if not (Path(lora_path) / "adapter_config.json").is_file():
                recorded = json.dumps(fixture("load_lora_adapter_not_found")["response"]["json"])
                return httpx.Response(
                    404, json=_named(json.loads(recorded.replace("/adapters/missing", lora_path)), name)
                )
            self.loras[name] = lora_path
            return _replay("load_lora_adapter", name)
        if path == "/v1/unload_lora_adapter":
            name = body.get("lora_name")
            if name not in self.loras:
                return _replay("unload_lora_adapter_not_found", str(name))
            del self.loras[name]
            return _replay("unload_lora_adapter", name)
        if path in ("/v1/completions", "/v1/chat/completions"):
            model = body.get("model")
            if model != self.base["id"] and model not in self.loras:
                return _replay("completions_model_not_found", str(model))
            recorded = "completions_stream" if path == "/v1/completions" else "chat_completions_stream"
            for field, kind in fixture(recorded)["request"]["json"].items():  # the types vLLM validates
                assert isinstance(body.get(field), type(kind)), f"{path}: {field}={body.get(field)!r}"
            assert body["stream"] is True, "the recorded contract is the streaming one"
            return _replay(recorded, str(model), model=model)
        return httpx.Response(404, json={"detail": "Not Found"})
