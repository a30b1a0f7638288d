"""The one place the policy's chat template is set: TRL's Qwen2.5 template.

SmolLM2-Instruct uses the same ``<|im_start|>``/``<|im_end|>`` tokens as Qwen2.5, but TRL 1.16
recognises templates by exact text and refuses SmolLM2's own for tool calling and
``assistant_only_loss``; with Qwen2.5's template both work, and vLLM's ``hermes`` parser reads
what it renders.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any


@cache
def qwen25_template() -> str:
    """TRL's ``qwen2_5.jinja``, read from the installed trl package."""
    return (resources.files("trl") / "chat_templates" / "qwen2_5.jinja").read_text("utf-8")


def use_qwen25_template(tokenizer: Any) -> Any:
    """Set the template (and a pad token) on ``tokenizer``; returns it."""
    tokenizer.chat_template = qwen25_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(model_dir: str | Path) -> Any:
    """The model's tokenizer with the Qwen2.5 template; never reaches a model hub."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return use_qwen25_template(tokenizer)
