"""Shared-prefix packing of DPO pairs, for the CPU: each pair goes through the model as one row, the prompt once and
chosen and rejected both attending to it, where TRL runs prompt + chosen and prompt + rejected as two rows padded to
each other. Fewer tokens run through the model; TRL's loss, metrics and logging are unchanged. Not for CUDA: the dense
4D mask (span^2 per pair) rules out the flash attention kernels."""

from typing import Any

BF16_SPAN_MULTIPLE = 16  # packed rows padded to a multiple of this with a bf16 base: few matmul shapes


def shared_prefix_trainer(span_multiple: int = 1, bf16_reference: bool = False) -> type:
    """TRL's DPOTrainer, with its concatenated forwards (the policy's, and the reference precompute's) run as packed
    pairs (see `SharedPrefix`; rows padded to a multiple of `span_multiple` tokens); the loss, metrics and logging
    are TRL's own. With `bf16_reference`, the reference log-probs are computed under a bf16 autocast (as TRL's
    default bf16=True computes everything), the policy's as before."""
    import torch
    from trl import DPOTrainer

    class SharedPrefixDPOTrainer(DPOTrainer):
        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            return super()._compute_loss(SharedPrefix.wrap(self, model, span_multiple), inputs, return_outputs)

        def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
            wrapped = SharedPrefix.wrap(self, model, span_multiple)
            if not bf16_reference:
                return super().compute_ref_log_probs(wrapped, inputs)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().compute_ref_log_probs(wrapped, inputs)

    return SharedPrefixDPOTrainer


class SharedPrefix:
    """Stands in for the model in TRL's `model(input_ids, attention_mask, labels, fused_lm_head=True)` call on a
    preference batch (rows [prompt + chosen_i ..., prompt + rejected_i ...], right-padded, labels -100 outside the
    completions). It runs each pair as one row: the prompt but its last token, then that token and the chosen
    completion, then that token again and the rejected completion, with a 4D attention mask (each completion sees the
    prompt and itself, causally) and position ids that restart after the prompt for each completion. So the prompt
    runs once, and chosen and rejected no longer pad each other; the repeated last prompt token predicts the first
    token of each completion. TRL's fused head scores it (`shift_labels`), and the per-token fields come back in TRL's
    layout (zero outside the completions). Any other call, batch or model (distributed wrappers, prompt-learning
    PEFT, MoE router losses, attention other than sdpa/eager, sliding windows or non-attention layers that could
    bind) goes to the model unchanged."""

    ATTENTION = ("sdpa", "eager")  # take a 4D mask as given
    CALL_KEYS = {"input_ids", "attention_mask", "labels", "fused_lm_head", "use_cache"}

    def __init__(self, model: Any, backbone: Any, config: Any, span_multiple: int = 1) -> None:
        self.model, self.backbone, self.config, self.span_multiple = model, backbone, config, span_multiple

    @classmethod
    def wrap(cls, trainer: Any, model: Any, span_multiple: int = 1) -> Any:
        from peft import PeftModel

        if trainer.args.gradient_checkpointing or trainer.accelerator.unwrap_model(model) is not model:
            return model
        if isinstance(model, PeftModel):
            if model.active_peft_config.is_prompt_learning:
                return model
            causal_lm = model.get_base_model()
        else:
            causal_lm = model
        config = getattr(causal_lm, "config", None)
        backbone = getattr(causal_lm, "base_model", None)
        if config is None or backbone is None or backbone is causal_lm or config.get_text_config() is not config:
            return model
        if getattr(config, "_attn_implementation", None) not in cls.ATTENTION:
            return model
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        if not layer_types <= {"full_attention", "sliding_attention"}:
            return model
        return cls(model, backbone, config, span_multiple)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, **kwargs: Any) -> Any:
        if kwargs.get("fused_lm_head") and set(kwargs) <= self.CALL_KEYS and kwargs.get("labels") is not None:
            outputs = self._forward(kwargs["input_ids"], kwargs["attention_mask"], kwargs["labels"])
            if outputs is not None:
                return outputs
        return self.model(**kwargs)

    def _forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
        """TRL's fused output for the batch through packed pairs, or None where the batch cannot be packed."""
        import torch

        rows, width = input_ids.shape
        pairs = rows // 2
        scored = labels != -100
        lengths = attention_mask.sum(dim=1)
        positions = torch.arange(width, device=input_ids.device)
        starts = scored.int().argmax(dim=1)  # the first completion token: the prompt's length
        packable = (
            rows == 2 * pairs
            and bool(scored.any(dim=1).all())
            and torch.equal(starts[:pairs], starts[pairs:])
            and bool((starts >= 2).all())  # a prefix to share
            and torch.equal(attention_mask.bool(), positions < lengths[:, None])
        )
        if not packable:
            return None
        prefix = starts[:pairs] - 1
        prefix_mask = positions < prefix[:, None]
        if not torch.equal(input_ids[:pairs] * prefix_mask, input_ids[pairs:] * prefix_mask):
            return None
        chosen_end = lengths[:pairs]  # packed: prefix, chosen (from the last prompt token), rejected (likewise)
        packed_lengths = chosen_end + lengths[pairs:] - prefix
        span = -(-int(packed_lengths.max()) // self.span_multiple) * self.span_multiple
        layer_types, window = getattr(self.config, "layer_types", None), getattr(self.config, "sliding_window", None)
        sliding = "sliding_attention" in layer_types if layer_types else window is not None
        if sliding and window is not None and window < span:  # a window that could bind: the 4D mask ignores it
            return None
        at = torch.arange(span, device=input_ids.device)[None, :]
        segment = torch.where(at < prefix[:, None], 0, torch.where(at < chosen_end[:, None], 1, 2))
        segment = torch.where(at < packed_lengths[:, None], segment, 3)  # 3: padding
        pair = torch.arange(pairs, device=input_ids.device)[:, None]
        source_row = torch.where(segment == 2, pair + pairs, pair)
        offset = torch.where(segment == 2, (chosen_end - prefix)[:, None], 0)  # rejected follows the chosen part
        source_position = torch.where(segment == 3, 0, at - offset)
        following = source_position + 1
        scores = (segment == 1) | (segment == 2)
        shift_labels = labels[source_row, following.clamp(max=width - 1)]
        shift_labels = shift_labels.masked_fill(~scores | (following >= lengths[source_row]), -100)
        # A query sees the earlier keys of the prompt and of its own segment (padding sees the prompt and padding).
        allowed = (at[:, :, None] >= at[:, None, :]) & (
            (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])
        )
        if self.config._attn_implementation == "sdpa":  # True attends; whatever dtype autocast gives the queries
            mask = allowed[:, None]
        else:  # eager adds it to the scores
            dtype = self.backbone.get_input_embeddings().weight.dtype
            mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
            mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
        outputs = self.model(
            input_ids=input_ids[source_row, source_position],
            attention_mask=mask,
            position_ids=source_position,
            shift_labels=shift_labels,
            fused_lm_head=True,
        )

        # Back to TRL's layout: its row r, position t is packed row r mod pairs, t + (the chosen part for rejected).
        shift = torch.cat([torch.zeros_like(prefix), chosen_end - prefix])[:, None]
        packed_at = (positions[None, : width - 1] + shift).clamp(max=span - 1)
        packed_row = (torch.arange(rows, device=input_ids.device) % pairs)[:, None]
        valid = scored[:, 1:]

        def as_trl(values: Any) -> Any:
            return None if values is None else values[packed_row, packed_at].masked_fill(~valid, 0)

        for field in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask"):
            setattr(outputs, field, as_trl(getattr(outputs, field)))
        return outputs
