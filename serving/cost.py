"""What a generation cost, from its token counts: the upstream's at its provider's prices (input and output apart),
our own at the project's price of serving its own model (`model.price_per_mtok`, e.g. GPU cost over measured
throughput). None when the project has set no price for that target: an unknown cost is not a free one."""

from trainers.config import ModelSettings, UpstreamSettings

MTOK = 1_000_000


def upstream_cost(upstream: UpstreamSettings, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * upstream.price_input_per_mtok + completion_tokens * upstream.price_output_per_mtok) / MTOK


def own_cost(model: ModelSettings, prompt_tokens: int, completion_tokens: int) -> float | None:
    if model.price_per_mtok is None:
        return None
    return (prompt_tokens + completion_tokens) * model.price_per_mtok / MTOK
