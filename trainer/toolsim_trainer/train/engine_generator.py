"""Rollout turns through the embedded continuous-batching engine, in sync with the policy.

On CPU, ``generate`` on the trainer's model decodes one padded batch per turn and prefills
the whole conversation again every turn. ``EngineGenerator`` (``generation_backend:
embedded``) sends every rollout's turn to ``toolsim.llm.embedded.EmbeddedBackend`` instead, the
engine the simulator and the evaluation use: continuous batching (a row that stopped frees its
slot), and its prefix cache (the rollouts of a group share their prompt; a turn reuses the KV
of the turn before). It is what TRL's ``use_vllm`` does on a GPU, on this engine: before the
first turn of each training step the engine's weights are replaced by the policy's, its LoRA
merged (``W + ΔW``, read from PEFT's ``get_delta_weight``; the trainer's weights are never
touched), so every turn is sampled from the current policy. The loss is computed by the
trainer on the returned ids, as with ``model_generator``; no sampling log-probs are returned.

Sampling is plain temperature sampling (the engine has no top-p/top-k; the config refuses
them with this backend), each row with its own seed (the rows of a group share a prompt).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolsim.llm.base import GenerationRequest

if TYPE_CHECKING:
    import torch

    from toolsim.llm.embedded import EmbeddedBackend, EmbeddedStats
    from toolsim_trainer.train.rollout import Generated, _LoopThread


def merged_weights(model: Any) -> dict[str, torch.Tensor]:
    """The LoRA-wrapped weights of a PEFT ``model`` with its active adapters merged, named as
    in the base model's ``state_dict`` (``model.layers.0.self_attn.q_proj.weight``)."""
    import torch
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or not hasattr(module, "base_layer"):
                continue
            layer: Any = module  # a LoRA Linear (get_delta_weight is on the concrete class)
            weight = layer.base_layer.weight.detach().clone()
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A and not layer.merged:
                    weight += layer.get_delta_weight(adapter).to(weight.dtype)
            out[_base_name(name) + ".weight"] = weight
    return out


def _base_name(peft_name: str) -> str:
    """``base_model.model.model.layers.0.mlp.up_proj`` -> ``model.layers.0.mlp.up_proj``."""
    prefix = "base_model.model."
    return peft_name[len(prefix) :] if peft_name.startswith(prefix) else peft_name


class EngineGenerator:
    """A ``TurnGenerator`` (see ``rollout.py``) on an embedded engine loaded from ``model_dir``
    (the policy's base model: the LoRA is merged into it each step)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        temperature: float,
        seed: int,
        max_batch_size: int = 16,
        dtype: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.dtype = dtype
        """The engine's dtype (``auto``: bfloat16 where the CPU has it natively; the policy
        trains in float32, so it samples from a bfloat16 copy, as vLLM does on a GPU)."""
        self.temperature = temperature
        self.seed = seed
        self.max_batch_size = max_batch_size
        self.synced_step: int | None = None
        """The training step whose weights the engine holds (None: the base model's)."""
        self.turns = 0
        self._engine: EmbeddedBackend | None = None
        self._loop: _LoopThread | None = None
        self._last_stats: EmbeddedStats | None = None

    def __call__(
        self, trainer: Any, sequences: list[list[int]], limits: list[int], stop_ids: list[int]
    ) -> list[Generated]:
        from toolsim_trainer.train.rollout import Generated, _LoopThread

        if self._loop is None:
            self._loop = _LoopThread()
        engine = self._loop.run(self._started())
        step = int(trainer.state.global_step)
        if step != self.synced_step:
            model = trainer.accelerator.unwrap_model(trainer.model)
            self._loop.run(engine.update_weights(merged_weights(model)))
            self.synced_step = step
        self.turns += 1
        requests = [
            GenerationRequest(
                messages=[],
                prompt_ids=sequence,
                seed=self._seed(step, k),
                temperature=self.temperature,
                max_tokens=max(1, limit),
            )
            for k, (sequence, limit) in enumerate(zip(sequences, limits, strict=True))
        ]
        outs = self._loop.run(_all(engine, requests))
        stops = set(stop_ids)
        generated = []
        for out, limit in zip(outs, limits, strict=True):
            ids = list(out.token_ids or ())
            if out.stop_token_id is not None and out.stop_token_id in stops:
                ids.append(out.stop_token_id)
            generated.append(Generated(ids[:limit]))
        return generated

    def _seed(self, step: int, row: int) -> int:
        """A seed per row, turn and step: the rows of a group must not sample alike."""
        text = f"{self.seed}:{step}:{self.turns}:{row}".encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big") >> 1

    async def _started(self) -> EmbeddedBackend:
        if self._engine is None:
            from toolsim.llm.embedded import EmbeddedBackend

            engine = EmbeddedBackend(
                self.model_dir,
                max_batch_size=self.max_batch_size,
                model_name="grpo-policy",
                dtype=self.dtype,
            )
            await engine.start()
            self._engine = engine
        return self._engine

    def batch_metrics(self) -> dict[str, float]:
        """What the engine did since the last call, logged with the step (``engine/*``): the
        share of prompt tokens its prefix cache spared, and the weight syncs."""
        if self._engine is None:
            return {}
        now = self._engine.stats_snapshot()
        before, self._last_stats = self._last_stats, now
        hit = now.prefix_hit_tokens - (before.prefix_hit_tokens if before else 0)
        prompt = now.prompt_tokens - (before.prompt_tokens if before else 0)
        syncs = now.weight_updates - (before.weight_updates if before else 0)
        return {"engine/prefix_hit_share": hit / max(1, prompt), "engine/weight_syncs": syncs}

    def close(self) -> None:
        if self._loop is None:
            return
        if self._engine is not None:
            self._loop.run(self._engine.aclose())
            self._engine = None
        self._loop.close()
        self._loop = None


async def _all(engine: EmbeddedBackend, requests: list[GenerationRequest]) -> list[Any]:
    return list(await asyncio.gather(*(engine.generate(r) for r in requests)))
