"""Tiny randomly initialised causal LMs with a real (trained) BPE tokenizer.

The whole test suite runs on these: they are built in well under a second, offline,
and behave like real Hugging Face checkpoints (config, safetensors weights,
tokenizer.json with a ChatML chat template, generation_config.json). The tokenizer is
a byte-level BPE trained on a small built-in corpus, so any text round-trips.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

Arch = Literal["gpt2", "llama"]

# ChatML, as used by SmolLM2 and Qwen2: the tests exercise the same template path as
# the real base model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_CORPUS = """
The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy
is Rome. A model is a function learned from data. Training adjusts the weights to lower
the loss on examples. This movie was great, I loved it. This movie was terrible, I hated
it. The food was good and the service was friendly. The plot was dull and the acting was
bad. Translate English to French: cheese => fromage. def add(a, b): return a + b
What is two plus two? Two plus two is four. Question: who wrote Hamlet? Answer: William
Shakespeare. positive negative neutral label text prompt completion user assistant system
0123456789 !?.,;:'"()[]{}<>+-*/=_#@$%&|\\ the quick brown fox jumps over the lazy dog.
"""


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return str(tok.to_str())


def tiny_tokenizer() -> Any:
    """A `PreTrainedTokenizerFast` with ChatML template and pad token."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(arch: Arch, vocab_size: int, **overrides: Any) -> Any:
    """A transformers config for a 2-layer model with hidden size 32."""
    from transformers import GPT2Config, LlamaConfig

    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2,
                              "pad_token_id": 3}
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    elif arch == "llama":
        cfg = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
            **common,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}: use 'gpt2' or 'llama'")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def make_tiny_model(arch: Arch, out_dir: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random causal LM as a Hugging Face folder and return its path."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = tiny_tokenizer()
    cfg = tiny_config(arch, len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=3, max_new_tokens=16
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_tiny_adapter(base_dir: Path, out_dir: Path, *, seed: int = 0, r: int = 4,
                      target_modules: tuple[str, ...] | None = None,
                      lora_bias: bool = False) -> Path:
    """A PEFT LoRA adapter for the model in `base_dir`, with random (non-zero) B (and B's
    bias, with `lora_bias`) so it changes the model's outputs, saved as PEFT writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    if target_modules is None:
        target_modules = ("c_attn",) if base.config.model_type == "gpt2" else ("q_proj", "v_proj")
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, lora_bias=lora_bias,
                                            target_modules=list(target_modules)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def make_tiny_classifier(base_dir: Path, out_dir: Path, labels: list[str], *,
                         seed: int = 0) -> Path:
    """A `*ForSequenceClassification` model on the backbone in `base_dir`, with a random
    head over the last non-padding token, and the base's tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir
