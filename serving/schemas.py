"""Wire types of the OpenAI completions and chat API, as far as the gateway serves it.

Requests accept the fields OpenAI clients and editors send and ignore the ones that change nothing here
(`frequency_penalty`, `logit_bias`, ...); the fields whose meaning we cannot honour (`n` > 1, `logprobs`, `echo`,
`best_of` > 1, tools) are refused by name rather than silently dropped."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Stop = str | Annotated[list[str], Field(max_length=4)] | None


class _GenerationParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=200)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    user: Annotated[str, Field(max_length=200)] | None = None
    n: Literal[1] = 1
    metadata: dict[str, Any] | None = Field(
        None, description="Recorded with the generation; `file_path`, `language` and `session` fill those fields."
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Stop) -> Stop:
        stops = [value] if isinstance(value, str) else value or []
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_GenerationParams):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    suffix: str | None = None
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Literal[1] | None = None

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts carry anything we can use
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(_GenerationParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1000)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Literal[False] | None = None
    tools: None = None

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text} for m in self.messages]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str = Field(description="The generation_id: post feedback events for it.")
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str = Field(description="The version that generated it (`v3`), or `base`.")
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str = Field(description="The generation_id: post feedback events for it.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "editloop"
    root: str | None = Field(None, description="For an alias, the version it points at now.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
