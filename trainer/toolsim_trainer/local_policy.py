"""A policy that runs a local model folder in this process (plus, optionally, a LoRA adapter).

Generation reuses the ToolActor's continuously batched engine (``toolsim.llm.embedded``), so
concurrent questions of an evaluation share one running batch instead of queuing on a lock.
The prompt is rendered here, with TRL's Qwen2.5 template (``chat_template.load_tokenizer``),
and handed to the engine as token ids: the policy is measured on exactly the text it was
trained on. Generation stops at ``<|im_end|>`` (SmolLM2's end-of-sequence token) or at
``max_tokens``.

A LoRA adapter (a trainer's ``final/`` folder, or any PEFT adapter folder) is merged into the
base weights once, into ``<cache_dir>/merged/<digest>``, keyed by the digest of the adapter's
files and the base folder; later runs with the same adapter load the merged folder directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolsim.errors import ToolsimError
from toolsim.llm.base import GenerationRequest
from toolsim.llm.embedded import EmbeddedBackend
from toolsim_trainer.chat_template import load_tokenizer
from toolsim_trainer.policy import Policy, PolicyError, PolicyOutput

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
TRAINER_FINAL_DIR = "final"  # = train.common.FINAL_DIR; not imported: that module needs TRL


class LocalPolicyError(ValueError):
    """A model or adapter folder that cannot be used; the message says how to fix it."""


def default_model_dir() -> Path:
    """The packaged model (``toolsim model path``): what the services load too."""
    from toolsim.config import CommonSettings

    return CommonSettings().resolved_model_dir


def resolve_adapter(path: str | Path) -> Path:
    """The PEFT adapter folder at ``path``, or in its ``final/`` (a trainer's run folder)."""
    folder = Path(path)
    for candidate in (folder, folder / TRAINER_FINAL_DIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise LocalPolicyError(
        f"{folder} holds no {ADAPTER_CONFIG} (nor does {folder / TRAINER_FINAL_DIR}): give a "
        "PEFT adapter folder, such as a training run's final/"
    )


def check_model_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise LocalPolicyError(
            f"{path} holds no model (config.json): give a model folder, or run "
            "`toolsim model fetch` for the packaged one"
        )
    return path


def adapter_digest(adapter_dir: Path, base_dir: Path) -> str:
    """Digest of every file of the adapter plus the base folder's identity: the merge cache key.

    The base counts by path, size and modification time of its files (hashing 500 MB of
    weights on every run would cost more than the merge it saves)."""
    h = hashlib.sha256()
    for file in sorted(p for p in adapter_dir.iterdir() if p.is_file()):
        h.update(file.name.encode())
        h.update(file.read_bytes())
    h.update(str(base_dir.resolve()).encode())
    for file in sorted(p for p in base_dir.iterdir() if p.is_file()):
        stat = file.stat()
        h.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def merged_model_dir(base_dir: Path, adapter_dir: Path, cache_dir: Path) -> Path:
    """A full model folder of ``base_dir`` with ``adapter_dir`` merged in (built once)."""
    target = cache_dir / "merged" / adapter_digest(adapter_dir, base_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: a merge interrupted half-way is never reused.
    scratch = Path(tempfile.mkdtemp(prefix=".merging-", dir=target.parent))
    try:
        _merge_into(base_dir, adapter_dir, scratch)
        os.replace(scratch, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("merged adapter %s into %s", adapter_dir, target)
    return target


def _merge_into(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, local_files_only=True
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    # The base tokenizer as it is: the engine decodes with it and stops at its eos.
    AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True).save_pretrained(str(out))


class LocalPolicy(Policy):
    """A local model folder (default: the packaged model) plus an optional LoRA adapter."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        adapter: str | Path | None = None,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        num_threads: int | None = None,
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        self.base_dir = check_model_dir(Path(model_dir) if model_dir else default_model_dir())
        self.adapter_dir = resolve_adapter(adapter) if adapter is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self.name = f"local:{self.base_dir}" + (f"+{self.adapter_dir}" if self.adapter_dir else "")
        self.tokenizer = load_tokenizer(self.base_dir)
        self._engine_options: dict[str, Any] = {
            "max_batch_size": max_batch_size,
            "batch_wait_ms": batch_wait_ms,
            "num_threads": num_threads,
            "dtype": dtype,
        }
        self.backend: EmbeddedBackend | None = None
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Merge the adapter (first time only) and load the engine; idempotent."""
        async with self._start_lock:
            if self.backend is not None:
                return
            folder = self.base_dir
            if self.adapter_dir is not None:
                folder = await asyncio.to_thread(
                    merged_model_dir, self.base_dir, self.adapter_dir, self.cache_dir
                )
            backend = EmbeddedBackend(folder, model_name=self.name, **self._engine_options)
            try:
                await backend.start()
            except BaseException as exc:
                # Interrupted while loading (Ctrl-C) or failed: stop the loader thread too, or
                # the interpreter aborts at exit with the thread still inside torch.
                await asyncio.shield(backend.aclose())
                if isinstance(exc, ToolsimError):
                    raise PolicyError(f"{self.name}: {exc}") from exc
                raise
            self.backend = backend

    async def aclose(self) -> None:
        if self.backend is not None:
            await self.backend.aclose()
            self.backend = None

    def prompt_ids(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> list[int]:
        """The Qwen2.5-templated prompt, ending in the ``<|im_start|>assistant`` header."""
        encoded = self.tokenizer.apply_chat_template(
            list(messages),
            tools=list(tools) or None,  # no tools: no "# Tools" block in the system prompt
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return [int(t) for t in encoded]

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        await self.start()
        assert self.backend is not None
        started = time.perf_counter()
        request = GenerationRequest(
            messages=[],
            prompt_ids=self.prompt_ids(messages, tools),
            seed=seed,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        try:
            out = await self.backend.generate(request)
        except ToolsimError as exc:
            raise PolicyError(f"{self.name}: {exc}") from exc
        return PolicyOutput(
            text=out.text,
            finish_reason=out.finish_reason,
            completion_tokens=out.completion_tokens,
            latency_s=time.perf_counter() - started,
        )


def _default_cache_dir() -> Path:
    from toolsim.config import CommonSettings

    return CommonSettings().cache_dir
