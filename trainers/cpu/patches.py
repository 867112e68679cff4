"""Patches of torch layers and of TRL's and PEFT's internals that speed up DPO on the CPU. Each is a context manager
that puts the library back as it was, and hands any call it does not cover to the library's own code. They reach
into private internals of the trl, peft and transformers versions pinned in pyproject.toml; where one is missing
they leave the library as it is.

- `bf16_frozen_linears`: the frozen base multiplies in bf16 from a bf16 copy of its weights, where the CPU has
  native bf16 matmuls;
- `bf16_head_under_autocast`: in the bf16 reference precompute, TRL's head multiplies one bf16 copy of the output
  embedding instead of casting the fp32 one again for every tile;
- `fused_lora_add`: each LoRA layer adds its update in one addmm, where PEFT runs a matmul, a scaling and an addition
  over the whole output (and each again in the backward);
- `score_labelled_positions_only`: TRL's head projects only the completion positions, as it does under Triton,
  instead of prompt and padding too;
- `logprob_tiles`: TRL's head folds fewer tokens per tile: its torch fallback materializes several fp32
  [tokens, vocab] temporaries per tile, the largest allocations of a step."""

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def bf16_frozen_linears(model: Any) -> Iterator[list[Any]]:
    """For the duration, the model's frozen linear layers (all but the LoRA matrices and the output embedding) multiply
    in bf16: a bf16 copy of each weight, the input cast to bf16 and the output back to the input's dtype (under a bf16
    autocast, as the reference precompute runs, left in bf16 as autocast's own linear would leave it). The fp32
    weights stay as they are (evaluation and the published adapter see the model unchanged); a layer whose weight
    requires grad when called, or under another autocast, runs its own forward. Yields the layers it covers."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    patched = []
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or module is output or "lora_" in name:
            continue
        if module.weight.dtype != torch.float32 or "forward" in vars(module):
            continue
        weight = module.weight.detach().to(torch.bfloat16)
        bias = None if module.bias is None else module.bias.detach().to(torch.bfloat16)
        patched.append((module, _bf16_forward(module, weight, bias)))
    with _instance_forwards(patched):
        yield [module for module, _ in patched]


def _bf16_forward(module: Any, weight: Any, bias: Any) -> Any:
    import torch
    import torch.nn.functional as F

    own = type(module).forward

    def forward(x: Any) -> Any:
        if module.weight.requires_grad:
            return own(module, x)
        if torch.is_autocast_enabled(x.device.type):
            if torch.get_autocast_dtype(x.device.type) != torch.bfloat16:
                return own(module, x)
            # What autocast's linear computes, from the cached copy: autocast casts a frozen weight on every call.
            return F.linear(x.to(torch.bfloat16), weight, bias)
        return F.linear(x.to(torch.bfloat16), weight, bias).to(x.dtype)

    return forward


@contextlib.contextmanager
def bf16_head_under_autocast(model: Any) -> Iterator[bool]:
    """For the duration, TRL's fused log-prob head, where it runs under a bf16 autocast (the reference precompute with
    a bf16 base), multiplies by one bf16 copy of the model's output embedding (made at its first such call, dropped at
    the end) instead of casting each vocabulary chunk of the fp32 weight again for every tile: the same bf16 values,
    so the same log-probs, without re-reading the whole fp32 head per tile. Any other call (no autocast, another
    dtype, another weight, one that requires grad) goes to TRL's function as it is. Yields whether it could (False:
    another layout of TRL, left as it is)."""
    import importlib

    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight: Any = getattr(output, "weight", None)
    try:
        original: Any = getattr(importlib.import_module("trl.trainer.utils"), "_ChunkedLogProbFunction", None)
    except ImportError:
        original = None
    if weight is None or original is None:
        yield False
        return
    copies: dict[str, Any] = {}

    class Bf16Head:
        @staticmethod
        def apply(hidden: Any, head_weight: Any, bias: Any, *args: Any) -> Any:
            device = head_weight.device.type
            if (
                head_weight is weight
                and not head_weight.requires_grad
                and torch.is_autocast_enabled(device)
                and torch.get_autocast_dtype(device) == torch.bfloat16
            ):
                if not copies:
                    copies["weight"] = weight.detach().to(torch.bfloat16)
                    copies["bias"] = None if bias is None else bias.detach().to(torch.bfloat16)
                head_weight, bias = copies["weight"], copies["bias"]
            return original.apply(hidden, head_weight, bias, *args)

    try:
        with _module_attribute("trl.trainer.utils", "_ChunkedLogProbFunction", Bf16Head) as swapped:
            yield swapped
    finally:
        copies.clear()


@contextlib.contextmanager
def fused_lora_add(model: Any) -> Iterator[int]:
    """For the duration, each PEFT LoRA `Linear` of `model` adds its update in one `addmm` (the base output, plus
    `scaling` x lora_A(x) @ lora_B.T) where PEFT runs a matmul, a multiplication by `scaling` and an addition over the
    [tokens, out_features] output, each again in the backward. The same sum; an instance `forward`, removed after. Any
    call it does not cover (adapters disabled or merged, several adapters, variants such as DoRA, a bias on lora_B,
    extra arguments, autocast, mixed dtypes) runs PEFT's own forward. Yields how many layers it covers."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    layers = [m for m in model.modules() if isinstance(m, LoraLinear) and "forward" not in vars(m)]
    patched = [(m, _fused_lora_forward(m)) for m in layers]
    with _instance_forwards(patched):
        yield len(patched)


def _fused_lora_forward(module: Any) -> Any:
    import torch

    own = type(module).forward

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        adapters = module.active_adapters
        if args or kwargs or module.disable_adapters or module.merged or len(adapters) != 1:
            return own(module, x, *args, **kwargs)
        name = adapters[0]
        if name not in module.lora_A or name in module.lora_variant or torch.is_autocast_enabled(x.device.type):
            return own(module, x, *args, **kwargs)
        lora_a, lora_b = module.lora_A[name], module.lora_B[name]
        if type(lora_b) is not torch.nn.Linear or lora_b.bias is not None or x.dtype != lora_a.weight.dtype:
            return own(module, x, *args, **kwargs)
        result = module.base_layer(x)
        update = lora_a(module.lora_dropout[name](x))
        if result.dtype != lora_b.weight.dtype:  # PEFT's own sum, in its dtype (the base layer has run already)
            return (result + lora_b(update) * module.scaling[name]).to(result.dtype)
        features = result.shape[-1]
        summed = torch.addmm(
            result.reshape(-1, features),
            update.reshape(-1, update.shape[-1]),
            lora_b.weight.t(),
            alpha=module.scaling[name],
        )
        return summed.view(result.shape)

    return forward


@contextlib.contextmanager
def score_labelled_positions_only() -> Iterator[bool]:
    """For the duration, TRL's fused head projects only the positions with a label (the completions), on every
    device: TRL does so only where Triton runs (`compact` in `add_fused_lm_head`: elsewhere it scores every position,
    prompt and padding too, so that tile shapes stay fixed for compilers; eager CPU torch has nothing to recompile).
    It decides through `trl.trainer.utils._use_triton`, which that function alone reads there (the kernel keeps its
    own reference, so its tiles still fold in torch). Yields whether it could (False: another TRL layout, left as
    it is)."""
    with _module_attribute("trl.trainer.utils", "_use_triton", lambda device: True) as swapped:
        yield swapped


@contextlib.contextmanager
def logprob_tiles(tokens: int) -> Iterator[None]:
    """TRL's chunked log-prob head with `tokens` per tile for the duration (a module constant; restored after)."""
    with _module_attribute("trl.kernels.chunked_logprob", "TOKEN_CHUNK_SIZE", tokens):
        yield


@contextlib.contextmanager
def _module_attribute(module_name: str, name: str, value: Any) -> Iterator[bool]:
    """`module_name.name` set to `value` for the duration and restored after. Yields whether it was: False where the
    module or the attribute is missing (another layout of the library: left as it is)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        yield False
        return
    previous = getattr(module, name, None)
    if previous is None:
        yield False
        return
    setattr(module, name, value)
    try:
        yield True
    finally:
        setattr(module, name, previous)


@contextlib.contextmanager
def _instance_forwards(patched: list[tuple[Any, Any]]) -> Iterator[None]:
    """Each (module, forward) pair's `forward` as the module's instance attribute for the duration; removed after, so
    that the class's own forward is back."""
    for module, forward in patched:
        module.forward = forward
    try:
        yield
    finally:
        for module, _ in patched:
            del module.forward
