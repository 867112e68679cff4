"""`editloop model bootstrap`: a small local code model for the demo and the tests, built from nothing.

A byte-level BPE tokenizer is trained on the synthetic style corpus (`demo.corpus`), then a tiny Llama is
pretrained on the same corpus for a time budget, so its samples look like code and it is neutral on every style
axis: a preference learned later shows up as a change, not as a prior.

Importing this module is cheap: torch, transformers and TRL are imported inside the functions that need them.
"""

import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from demo.corpus import corpus
from demo.style import AXES
from ml.environment import library_versions

# Read by huggingface_hub and tokenizers when they are first imported, so they are set before any import below.
# setdefault: an operator who really wants the Hub online can still say so.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while they wait collapse when other processes share the cores; PASSIVE threads sleep.
# libgomp reads this once, when torch loads, so it only helps if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

METADATA = "editloop-bootstrap.json"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Progress = Callable[[int, int | None, dict], None]


@dataclass(frozen=True)
class BootstrapConfig:
    documents: int = field(default=30_000, metadata={"help": "Synthetic documents for the tokenizer and pretraining."})
    vocab_size: int = field(
        default=2048, metadata={"help": "BPE vocabulary size, special tokens included (less if the corpus is tiny)."}
    )
    hidden_size: int = field(default=128, metadata={"help": "Model width; 4 attention heads, MLP 3x wider."})
    layers: int = field(default=4, metadata={"help": "Transformer layers."})
    seconds: float = field(
        default=120.0, metadata={"help": "Pretraining time budget in seconds (tokenizing not included)."}
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Stop after this many optimizer steps, if sooner than `seconds`. Set it for a run "
                  "that is reproducible across machines: a time budget stops at a different step on each."},
    )  # fmt: skip
    seed: int = field(default=0, metadata={"help": "Seed for the corpus, the initial weights and the data order."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Constant learning rate after warmup."})
    batch_size: int = field(
        default=8,
        metadata={"help": "Packed sequences of `max_length` tokens per step. 8 rather than 16: for the same tokens "
                  "and CPU time, twice the steps reached a lower held-out loss."},
    )  # fmt: skip
    max_length: int = field(default=256, metadata={"help": "Tokens per packed training sequence."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear learning-rate warmup steps."})

    def __post_init__(self) -> None:
        if self.hidden_size % 4:
            raise ValueError("hidden_size must be a multiple of 4 (4 attention heads)")
        if self.max_length > 512:
            raise ValueError("max_length must be at most 512 (the model's max_position_embeddings)")
        for name in ("documents", "vocab_size", "hidden_size", "layers", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.seconds <= 0 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("seconds and max_steps must be positive")

    @staticmethod
    def help() -> dict[str, str]:
        """Field name -> help text, for the CLI."""
        return {f.name: f.metadata["help"] for f in fields(BootstrapConfig)}


# The demo's and the tests' tiny model. It stops on a step count, not on the clock, so its quality does not depend on
# how busy the machine is; 300 steps is what it takes on this corpus for most greedy samples to parse.
TINY_MODEL = BootstrapConfig(documents=6000, batch_size=8, max_steps=300, seconds=900)
# The rented model of `editloop demo --upstream`, the stronger model a team rents before editloop: three times the
# parameters, twice the documents (another seed) and twice the steps of TINY_MODEL, so it reaches a lower held-out loss
# and more of its samples parse, with the corpus's generic style (every style axis drawn uniformly: no team's taste).
RENTED_MODEL = BootstrapConfig(
    documents=12_000, hidden_size=192, layers=6, batch_size=8, max_steps=600, seconds=1800, seed=1
)


def is_bootstrap_output(path: Path) -> bool:
    return (path / METADATA).is_file()


def built_with(path: Path, config: BootstrapConfig) -> bool:
    """Whether the bootstrap output at `path` was built with exactly `config`."""
    try:
        recorded = json.loads((path / METADATA).read_text()).get("config")
    except (OSError, ValueError):
        return False
    return recorded == json.loads(json.dumps(asdict(config)))


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not is_bootstrap_output(out_dir):
        raise ValueError(f"{out_dir}: not empty and not a bootstrap output; refusing to replace it")
    if not overwrite:
        raise ValueError(f"{out_dir}: already holds a bootstrapped model; pass overwrite=True to replace it")


def _quiet() -> None:
    """No library progress bars: the CLI draws its own from `progress`."""
    import datasets
    from transformers.utils import logging

    datasets.disable_progress_bars()
    logging.disable_progress_bar()


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_tokenizer(docs: list[str], vocab_size: int):
    """Byte-level BPE trained on the documents, wrapped for transformers, with a distinct pad token (a pad equal to
    EOS makes sequence-classification heads read the wrong token) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, additional_special_tokens=CHAT_TOKENS
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(config: BootstrapConfig, tokenizer):
    """A tiny Llama. Llama rather than Qwen2: for a Qwen2 directory AutoTokenizer swaps in Qwen's pre-tokenizer,
    which is not the one this BPE was trained with."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=3 * config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_config(model_config)
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model


def _budget(config: BootstrapConfig, progress: Progress | None):
    """A TrainerCallback that stops training when the time budget or the step budget is spent, whichever comes
    first, records the losses and reports progress (with the latest logged loss)."""
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        def __init__(self) -> None:
            self.start = time.monotonic()
            self.elapsed = 0.0
            self.losses: list[tuple[int, float]] = []
            self.stopped_by = "steps"

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))

        def on_step_end(self, args, state, control, **kwargs):
            self.elapsed = time.monotonic() - self.start
            if progress is not None:
                loss = self.losses[-1][1] if self.losses else None
                progress(state.global_step, config.max_steps, {"loss": loss, "seconds": round(self.elapsed, 1)})
            if self.elapsed >= config.seconds:
                self.stopped_by = "time"
                control.should_training_stop = True
            elif config.max_steps is not None and state.global_step >= config.max_steps:
                control.should_training_stop = True
            return control

    return Budget()


def held_out_loss(model, tokenizer, docs: list[str]) -> float:
    """Mean next-token loss over documents the model never trained on."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(docs), 16):
            batch = tokenizer([d + EOS for d in docs[start : start + 16]], return_tensors="pt", padding=True)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            out = model(**batch, labels=labels)
            tokens = int((labels[:, 1:] != -100).sum())
            total += float(out.loss) * tokens
            count += tokens
    return total / max(count, 1)


def bootstrap(
    out_dir: Path, config: BootstrapConfig, progress: Progress | None = None, overwrite: bool = False
) -> dict:
    """Build tokenizer and model, pretrain them, and save both into `out_dir` with `editloop-bootstrap.json`.

    The directory appears complete or not at all: everything is written to a sibling temporary directory and
    renamed into place. An `out_dir` that exists and is not empty is refused, unless it is a previous bootstrap
    output and `overwrite` is set. Returns the metadata written to `editloop-bootstrap.json`.

    `progress(step, total, info)` is called after every optimizer step; `total` is `max_steps` or None when only
    the clock bounds the run; `info` has "loss" (the latest logged training loss, None before the first log) and
    "seconds" of training so far. A last call after training has "done": True."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)  # before the slow imports: a refusal should be instant

    import datasets
    import torch
    from transformers import PreTrainedModel, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    torch.set_num_threads(_threads())
    set_seed(config.seed)
    _quiet()

    docs = corpus(config.documents, config.seed)
    held_out = corpus(64, config.seed + 1_000_003)  # another seed: same distribution, other documents
    tokenizer = build_tokenizer(docs, config.vocab_size)
    model = build_model(config, tokenizer)
    dataset = datasets.Dataset.from_dict({"text": [doc + EOS for doc in docs]})
    budget = _budget(config, progress)

    build = out_dir.parent / f".{out_dir.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(prefix="editloop-bootstrap-") as scratch:
            args = SFTConfig(
                output_dir=scratch,
                max_length=config.max_length,
                packing=True,
                packing_strategy="wrapped",  # the default "bfd" is padding-free, which is slower on CPU
                per_device_train_batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                lr_scheduler_type="constant_with_warmup",
                warmup_steps=config.warmup_steps,
                # The time budget usually stops training first; the schedule is constant, so this only bounds it.
                max_steps=config.max_steps or 1_000_000,
                logging_steps=5,
                logging_first_step=True,
                use_cpu=True,
                bf16=False,
                activation_checkpointing=False,
                report_to="none",
                save_strategy="no",
                dataloader_pin_memory=False,
                disable_tqdm=True,
                seed=config.seed,
                data_seed=config.seed,
            )
            trainer = SFTTrainer(
                model=model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                callbacks=[budget],
            )
            trainer.remove_callback(PrinterCallback)  # progress goes to `progress`, not to stdout
            result = trainer.train()
        model = trainer.model
        assert isinstance(model, PreTrainedModel)  # no PEFT here, so the trainer keeps the model it was given
        model.config.use_cache = True
        eval_loss = held_out_loss(model, tokenizer, held_out)
        steps = int(result.global_step)
        if progress is not None:
            progress(steps, config.max_steps, {"loss": budget.losses[-1][1] if budget.losses else None, "done": True})

        metadata = {
            "kind": "editloop-bootstrap",
            "format": 1,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": asdict(config),
            "seed": config.seed,
            "initial_loss": budget.losses[0][1] if budget.losses else None,
            "final_loss": budget.losses[-1][1] if budget.losses else None,
            "held_out_loss": round(eval_loss, 4),
            "losses": budget.losses,
            "steps": steps,
            "stopped_by": budget.stopped_by,
            "seconds": round(budget.elapsed, 1),
            "total_seconds": round(time.monotonic() - began, 1),
            "tokens_trained": steps * config.batch_size * config.max_length,
            "parameters": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(),
            "corpus": {"generator": "demo.corpus.corpus", "documents": config.documents, "seed": config.seed},
            "style_axes": {axis: list(values) for axis, values in AXES.items()},
            "special_tokens": {"eos": EOS, "bos": EOS, "pad": PAD, "chat": CHAT_TOKENS},
            "library_versions": {"python": platform.python_version(), **library_versions()},
        }
        build.mkdir()
        model.save_pretrained(build)
        tokenizer.save_pretrained(build)
        (build / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        _move_into_place(build, out_dir, overwrite)
    finally:  # a failed or interrupted run leaves nothing behind
        shutil.rmtree(build, ignore_errors=True)
    return metadata


def _move_into_place(build: Path, out_dir: Path, overwrite: bool) -> None:
    _check_out_dir(out_dir, overwrite)  # again: someone may have written there while we trained
    if out_dir.exists() and any(out_dir.iterdir()):
        # Two renames: for a moment there is no model at out_dir, but never a half-written one.
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
        build.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(build, out_dir)  # onto a missing or empty directory: one atomic rename


def load(model_dir: Path):
    """(model, tokenizer) from a bootstrap output, ready to generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(_threads())
    _quiet()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tokenizer


def sample(
    model_dir: Path,
    prompts: list[str],
    max_new_tokens: int = 64,
    greedy: bool = True,
    temperature: float = 0.7,
    seed: int = 0,
) -> list[str]:
    """Completions (without the prompt) for each prompt, generated in one left-padded batch."""
    import torch

    model, tokenizer = load(Path(model_dir))
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    options = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature}
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, **options)
    new = out[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True)
