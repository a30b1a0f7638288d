"""The GRPO rollout: the policy writes turns, the ToolActor answers its calls over HTTP.

``make_rollout_func`` returns the ``rollout_func`` handed to TRL 1.16's ``GRPOTrainer``. What it
relies on in TRL 1.16.0 (line numbers of ``trl/trainer/grpo_trainer.py``):

- ``_generate`` calls ``rollout_func(prompts, trainer)`` (l. 2210) with the prompts of the
  generation batch as the dataset holds them (conversational: lists of messages; chat
  templating is the rollout's job, l. 2207-2209). The train sampler (``RepeatSampler`` with
  ``mini_repeat_count=num_generations``, l. 1309-1316) has already repeated each prompt
  ``num_generations`` times, consecutively, so the rollout returns exactly one completion per
  prompt it receives; TRL groups rows ``view(-1, num_generations)`` (l. 2765).
- The result must hold ``prompt_ids``, ``completion_ids`` and ``logprobs`` (l. 2211-2215).
  ``logprobs`` may be ``None`` (l. 2463): the sampling log-probs feed only the vLLM
  importance-sampling correction (l. 2660-2665) and the off-policy mask; the loss uses
  ``old_per_token_logps`` recomputed by the trainer, or the detached current ones (l. 3066).
  With vLLM the rollout returns them per token (0.0 on tool tokens, which the mask drops).
- Every other key is "extra". ``env_mask`` is popped and becomes the tool mask (l. 2272;
  1 = policy token, 0 = tool token): padded with 1 (l. 2481), multiplied into the loss mask
  (l. 2497) and into the importance-sampling mask, and the logged completion lengths count only
  its 1s (l. 2276-2277). The rest is copied row by row into the inputs (l. 2741-2748) and so
  reaches every reward function as a keyword argument (``_calculate_rewards``, l. 1585).
- ``mask_truncated_completions`` calls a completion truncated when its last id is no eos/pad id
  (l. 2490): a rollout cut by ``max_completion_length`` ends in a non-eos token here too, so the
  flag means what it means in single-turn GRPO.
- Generation does what TRL's own no-vLLM path does (``_generate_single_turn``, l. 1814-1889):
  ``unwrap_model_for_generation`` with ``trainer.generation_kwargs``, ``trainer.generation_config``
  (l. 1173: temperature, top_p, top_k, ...), left padding, the cut after the first of
  ``trainer.eos_token_ids`` (l. 416), plus ``use_cache=True`` (see ``model_generator``).
- Per-step scalars go through ``trainer._log_metric`` (l. 1565), the function TRL hands reward
  functions as ``log_metric``: it averages each name over the step and across processes when
  the batch is scored (l. 2850), so ``tools/*`` and ``timing/*`` land in the log line of the
  step, next to ``rewards/*``.

Each rollout runs inside its own ToolActor episode (grounded with the row's gold passages when
``grounded`` and the row has them). Every turn, the calls of all rollouts go out concurrently
over one ``ActorClient`` (one ``httpx.AsyncClient``, bounded concurrency, timeouts, retries) on
a private event loop thread; a failed call comes back as an error observation, which the
policy reads like any other tool response.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from toolsim_trainer.agent import TRUNCATED_MARK
from toolsim_trainer.clients import ActorClient, ServiceError, ServiceUnavailableError, ToolResult
from toolsim_trainer.grammar import (
    GrammarError,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    parse_turn,
    render_tool_turn,
)
from toolsim_trainer.train.rewards import CallRecord, RolloutRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

IM_END = "<|im_end|>"


@dataclass(frozen=True)
class RolloutConfig:
    """The limits of one rollout (``grpo.rollout_config`` builds it from the run config)."""

    max_completion_length: int = 512
    """Completion tokens in all, policy and tool tokens together (TRL's field of that name)."""
    max_tool_calls: int = 4
    """Hard cap: a turn whose calls would pass it is not sent and the rollout ends."""
    max_turns: int = 5
    """Assistant turns at most; a last turn that still calls tools ends the rollout unsent."""
    max_observation_tokens: int = 256
    """A longer tool response is cut (and marked) before the policy sees it."""
    grounded: bool = True
    """Create each episode with the row's gold passages when the row has them."""
    tool_seed: int | None = 0
    """Episode seed: the rollouts of a group see the same observation for the same call."""


GroupScorer = Callable[[Sequence[RolloutRecord], Sequence[Sequence[str]]], list[float]]
"""``(records, gold answers) -> total reward of each rollout``: the weighted sum of the reward
terms, as TRL will compute it (``grpo.group_scorer``)."""


@dataclass(frozen=True)
class DynamicSampling:
    """DAPO's dynamic sampling, inside the rollout: a group whose rollouts all score the same
    total reward (zero advantage, so no gradient with ``beta=0``) is drawn again, up to
    ``retries`` times; the first draw whose totals differ takes its place, and a group still
    flat after the last draw is kept as it is. TRL then scores the returned rollouts itself."""

    score: GroupScorer
    group_size: int
    """``num_generations``: TRL's rows come in consecutive groups of this size."""
    retries: int
    answers: Mapping[str, Sequence[str]]
    """Gold answers by question (TRL passes the rollout only the prompts)."""


def _flat(totals: Sequence[float]) -> bool:
    return max(totals) - min(totals) <= 1e-6


@dataclass(frozen=True)
class ToolsetSpec:
    """Which toolset the policy uses: one already on the ToolActor, or one to register."""

    id: str | None = None
    body: Mapping[str, Any] | None = None
    """A ``POST /v1/toolsets`` body: ``tools`` and optionally ``modes``, ``output_schemas``..."""

    def __post_init__(self) -> None:
        if (self.id is None) == (self.body is None):
            raise ValueError("give exactly one of ToolsetSpec.id and ToolsetSpec.body")


@dataclass(frozen=True)
class Generated:
    """One continuation: the new token ids and, when the backend reports them, the sampling
    log-prob of each (vLLM does; ``generate`` on the trainer's model is not asked to)."""

    ids: list[int]
    logprobs: list[float] | None = None


class TurnGenerator(Protocol):
    """Continues every sequence by one turn: ``limits[i]`` new tokens at most, ending with
    the first token of ``stop_ids`` when one is produced."""

    def __call__(
        self, trainer: Any, sequences: list[list[int]], limits: list[int], stop_ids: list[int]
    ) -> list[Generated]: ...


def model_generator(
    trainer: Any, sequences: list[list[int]], limits: list[int], stop_ids: list[int]
) -> list[Generated]:
    """One batched ``generate`` with the trainer's current policy, as TRL's no-vLLM path."""
    import torch
    from trl.models.utils import unwrap_model_for_generation

    pad_id = int(trainer.processing_class.pad_token_id)
    width = max(len(s) for s in sequences)
    device = trainer.accelerator.device
    input_ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences], device=device)
    attention = torch.tensor(
        [[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device
    )
    config = copy.deepcopy(trainer.generation_config)
    config.max_new_tokens = max(limits)
    config.eos_token_id = stop_ids
    # TRL turns ``use_cache`` off on the model for gradient checkpointing; without the KV cache
    # every new token re-reads the whole prompt (about 10x slower on a 400-token prompt).
    config.use_cache = True
    args = trainer.args
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=args.ds3_gather_for_generation,
            generation_kwargs=trainer.generation_kwargs,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
    ):
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=config,
        )
    new = output[:, width:].tolist()
    stops = set(stop_ids)
    return [Generated(_cut(ids, limit, stops)) for ids, limit in zip(new, limits, strict=True)]


def vllm_generator(
    trainer: Any, sequences: list[list[int]], limits: list[int], stop_ids: list[int]
) -> list[Generated]:
    """One turn through TRL's vLLM engine (``use_vllm``; colocated or server mode).

    TRL 1.16 syncs the policy weights into vLLM before it calls ``rollout_func``
    (``grpo_trainer.py`` l. 2201-2205). ``VLLMGeneration.generate`` (``trl/generation/
    vllm_generation.py`` l. 550) takes token ids and ``num_generations``; each sequence here is
    its own rollout, so 1. Its ``max_tokens`` is ``max_completion_length`` and it stops at the
    model's eos ids; the turn is then cut to the rollout's remaining budget. Log-probs come per
    token as a list whose first entry is the sampled token's (None for NaN, as TRL maps it).
    """
    _, completions, logprobs, _ = trainer.vllm_generation.generate(
        prompts=sequences, images=None, num_generations=1
    )
    stops = set(stop_ids)
    out: list[Generated] = []
    for k, (ids, limit) in enumerate(zip(completions, limits, strict=True)):
        kept = _cut(list(ids), limit, stops)
        sampled = None
        if logprobs is not None:
            sampled = [_first(lp) for lp in logprobs[k][: len(kept)]]
        out.append(Generated(kept, sampled))
    return out


def _first(logprob: Any) -> float:
    value = logprob[0] if isinstance(logprob, list | tuple) else logprob
    return float("nan") if value is None else float(value)


def _cut(ids: list[int], limit: int, stops: set[int]) -> list[int]:
    """Up to and including the first stop token, at most ``limit`` tokens (drops padding)."""
    for i, token in enumerate(ids[:limit]):
        if token in stops:
            return ids[: i + 1]
    return ids[:limit]


# ---------------------------------------------------------------------------- one rollout


@dataclass
class _Rollout:
    """The mutable state of one rollout while it runs."""

    question: str
    prompt_ids: list[int]
    grounding: dict[str, Any] | None
    completion: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    """Sampling log-prob per completion token (0.0 on tool tokens, which the tool mask drops);
    None once a turn came without them."""
    turns: list[str] = field(default_factory=list)
    tool_turns: list[tuple[CallRecord, ...]] = field(default_factory=list)
    requested_calls: int = 0
    sent_calls: int = 0
    stop: str | None = None
    last_turn_complete: bool = True
    episode_id: str | None = None

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.completion

    def remaining(self, config: RolloutConfig) -> int:
        return config.max_completion_length - len(self.completion)

    def record(self) -> RolloutRecord:
        return RolloutRecord(
            question=self.question,
            turns=tuple(self.turns),
            tool_turns=tuple(self.tool_turns),
            stop=self.stop or "length",
            requested_calls=self.requested_calls,
            policy_tokens=sum(self.mask),
            tool_tokens=len(self.mask) - sum(self.mask),
            last_turn_complete=self.last_turn_complete,
            episode_id=self.episode_id,
        )


def _take_turn(
    state: _Rollout, turn: Generated, tokenizer: Any, stops: set[int], config: RolloutConfig
) -> list[ToolCallItem]:
    """Append the policy's turn; return the calls to send now (none when the rollout ends)."""
    ids = turn.ids
    state.completion += ids
    state.mask += [1] * len(ids)
    if state.logprobs is not None and turn.logprobs is not None:
        state.logprobs += turn.logprobs
    else:
        state.logprobs = None
    complete = bool(ids) and ids[-1] in stops
    state.turns.append(tokenizer.decode(ids[:-1] if complete else ids))
    state.tool_turns.append(())
    if not complete:
        state.stop, state.last_turn_complete = "length", False
        return []
    parsed = parse_turn(state.turns[-1])
    if isinstance(parsed, GrammarError):
        state.stop = "grammar_error"
        return []
    if parsed.answer is not None:
        state.stop = "answer"
        return []
    calls = parsed.tool_calls
    state.requested_calls += len(calls)
    if state.sent_calls + len(calls) > config.max_tool_calls:
        state.stop = "tool_limit"
    elif len(state.turns) >= config.max_turns:
        state.stop = "turn_limit"
    elif state.remaining(config) <= 0:
        state.stop = "length"
    if state.stop is not None:
        return []
    n = len(state.turns)
    return [ToolCallItem(c.name, c.arguments, f"call_{n}_{k}") for k, c in enumerate(calls)]


def _add_tool_turn(
    state: _Rollout,
    calls: Sequence[ToolCallItem],
    results: Sequence[ToolResult],
    tokenizer: Any,
    config: RolloutConfig,
) -> None:
    """Append the observations as the template's tool turn (``env_mask`` 0): the completion
    stays append-only, so its ids are exactly what the policy was conditioned on."""
    records = tuple(
        CallRecord(
            name=c.name,
            arguments=c.arguments,
            tool_call_id=r.tool_call_id,
            content=_clip(r.content, tokenizer, config.max_observation_tokens),
            ok=r.ok,
            code=r.code,
            source=r.source,
            flags=r.flags,
        )
        for c, r in zip(calls, results, strict=True)
    )
    state.sent_calls += len(records)
    state.tool_turns[-1] = records
    turn = ToolTurn(tuple(ToolResponse(r.tool_call_id, r.content) for r in records))
    # The policy's turn ended with <|im_end|>; the template follows it with "\n".
    ids: list[int] = tokenizer("\n" + render_tool_turn(turn), add_special_tokens=False).input_ids
    room = state.remaining(config)
    if len(ids) >= room:
        ids, state.stop = ids[:room], "length"
    state.completion += ids
    state.mask += [0] * len(ids)
    if state.logprobs is not None:
        state.logprobs += [0.0] * len(ids)


def _clip(content: str, tokenizer: Any, max_tokens: int) -> str:
    ids = tokenizer(content, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return content
    return str(tokenizer.decode(ids[:max_tokens])) + TRUNCATED_MARK


# ---------------------------------------------------------------------------- the loop


class _LoopThread:
    """A private asyncio loop in a daemon thread: the one ``httpx.AsyncClient`` lives on it
    for the whole run (TRL calls ``rollout_func`` synchronously, once per generation batch)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class BatchStats:
    """What one call of the rollout did; logged as ``tools/*``, ``timing/*``, ``rollout/*``."""

    rollouts: int = 0
    calls: int = 0
    failures: int = 0
    cache_hits: int = 0
    flagged: int = 0
    episode_failures: int = 0
    generation_s: float = 0.0
    tool_wait_s: float = 0.0
    total_s: float = 0.0
    policy_tokens: list[int] = field(default_factory=list)
    tool_tokens: list[int] = field(default_factory=list)
    stops: dict[str, int] = field(default_factory=dict)
    groups: int = 0
    """Groups judged by dynamic sampling (0: it is off)."""
    flat_groups: int = 0
    """Groups whose first draw scored all alike."""
    redraws: int = 0
    """Groups drawn again (a group redrawn twice counts twice)."""
    flat_groups_left: int = 0
    """Groups still scoring all alike after the last redraw."""

    def count(self, records: Sequence[RolloutRecord]) -> None:
        self.rollouts = len(records)
        for r in records:
            for c in r.calls:
                self.calls += 1
                self.failures += not c.ok
                self.cache_hits += c.source == "cache"
                self.flagged += bool(c.flags)
            self.policy_tokens.append(r.policy_tokens)
            self.tool_tokens.append(r.tool_tokens)
            self.stops[r.stop] = self.stops.get(r.stop, 0) + 1

    def metrics(self) -> dict[str, float]:
        n, calls = max(1, self.rollouts), max(1, self.calls)
        out = {
            "tools/calls_per_rollout": self.calls / n,
            "tools/failures": float(self.failures),
            "tools/failure_rate": self.failures / calls,
            "tools/cache_hit_rate": self.cache_hits / calls,
            "tools/flagged_rate": self.flagged / calls,
            "tools/episode_failures": float(self.episode_failures),
            "timing/generation_s": self.generation_s,
            "timing/tool_wait_s": self.tool_wait_s,
            "timing/rollout_s": self.total_s,
            "tokens/policy_mean": sum(self.policy_tokens) / n,
            "tokens/policy_max": float(max(self.policy_tokens, default=0)),
            "tokens/tool_mean": sum(self.tool_tokens) / n,
        }
        for stop, count in sorted(self.stops.items()):
            out[f"rollout/stop_{stop}"] = count / n
        if self.groups:
            out["sampling/flat_groups"] = self.flat_groups / self.groups
            out["sampling/redraws"] = float(self.redraws)
            out["sampling/flat_groups_left"] = self.flat_groups_left / self.groups
        return out


class ToolRollout:
    """The ``rollout_func``: ``rollout(prompts, trainer) -> dict`` (see the module docstring).

    ``connect()`` checks the ToolActor (failing fast with its URL and the command that starts
    it) and resolves the toolset; the first call does it if nobody did. ``close()`` releases the
    HTTP client and the loop thread.
    """

    def __init__(
        self,
        config: RolloutConfig,
        actor_client_factory: Callable[[], ActorClient],
        toolset: ToolsetSpec,
        *,
        groundings: Mapping[str, dict[str, Any]] | None = None,
        generator: TurnGenerator = model_generator,
        dynamic_sampling: DynamicSampling | None = None,
    ) -> None:
        self.config = config
        self.toolset = toolset
        self.groundings = dict(groundings or {})
        self.generator = generator
        self.dynamic_sampling = dynamic_sampling
        """Set by ``grpo.build_grpo_trainer`` once the rewards exist."""
        self.last_stats = BatchStats()
        self._factory = actor_client_factory
        self._loop = _LoopThread()
        self._actor: ActorClient | None = None
        self._record: dict[str, Any] | None = None

    # -- set-up ------------------------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        """The toolset record (``id``, ``tools``, ...) after checking the ToolActor is up."""
        if self._record is None:
            self._record = self._loop.run(self._connect())
        return self._record

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The OpenAI tool definitions the prompts are rendered with."""
        return list(self.connect()["tools"])

    async def _client(self) -> ActorClient:
        if self._actor is None:
            self._actor = self._factory()  # built on the loop that will use it
        return self._actor

    async def _connect(self) -> dict[str, Any]:
        actor = await self._client()
        await actor.check()
        if self.toolset.body is not None:
            toolset_id = await actor.register_toolset(dict(self.toolset.body))
        else:
            assert self.toolset.id is not None
            toolset_id = self.toolset.id
        return await actor.get_toolset(toolset_id)

    def close(self) -> None:
        if self._actor is not None:
            self._loop.run(self._actor.aclose())
            self._actor = None
        self._loop.close()

    # -- one generation batch ---------------------------------------------------------------

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        started = time.perf_counter()
        self.connect()
        stats = BatchStats()
        states = self._run(prompts, trainer, stats)
        if self.dynamic_sampling is not None:
            self._redraw_flat_groups(prompts, states, trainer, stats, self.dynamic_sampling)
        records = [s.record() for s in states]
        stats.count(records)
        stats.total_s = time.perf_counter() - started
        self._log(trainer, stats)
        return {
            "prompt_ids": [s.prompt_ids for s in states],
            "completion_ids": [s.completion for s in states],
            "logprobs": _logprobs(states),
            "env_mask": [s.mask for s in states],
            "rollout": records,
            "episode_id": [s.episode_id for s in states],
        }

    def _redraw_flat_groups(
        self,
        prompts: list[Any],
        states: list[_Rollout],
        trainer: Any,
        stats: BatchStats,
        sampling: DynamicSampling,
    ) -> None:
        """Dynamic sampling: draw the flat groups of ``states`` again, in place."""
        size = sampling.group_size
        if size < 2 or len(states) % size:
            return
        starts = range(0, len(states), size)
        stats.groups = len(starts)

        def flat(group: Sequence[_Rollout]) -> bool:
            golds = [sampling.answers.get(s.question) for s in group]
            if any(g is None for g in golds):
                return False  # no gold answers to judge by: kept as drawn
            return _flat(sampling.score([s.record() for s in group], [g or () for g in golds]))

        pending = [i for i in starts if flat(states[i : i + size])]
        stats.flat_groups = len(pending)
        for _ in range(sampling.retries):
            if not pending:
                break
            stats.redraws += len(pending)
            fresh = self._run(
                [prompts[i + k] for i in pending for k in range(size)], trainer, stats
            )
            still = []
            for j, i in enumerate(pending):
                group = fresh[j * size : (j + 1) * size]
                if flat(group):
                    still.append(i)
                else:
                    states[i : i + size] = group
            pending = still
        stats.flat_groups_left = len(pending)

    def _run(self, prompts: Sequence[Any], trainer: Any, stats: BatchStats) -> list[_Rollout]:
        """One rollout per prompt, each in a new episode, turn by turn to its end."""
        tokenizer = trainer.processing_class
        states = [self._start(p, tokenizer) for p in prompts]
        stats.episode_failures += self._loop.run(self._open_episodes(states))
        stops = sorted({*trainer.eos_token_ids, int(tokenizer.convert_tokens_to_ids(IM_END))})
        for _ in range(self.config.max_turns):
            active = [s for s in states if s.stop is None]
            if not active:
                break
            t0 = time.perf_counter()
            limits = [s.remaining(self.config) for s in active]
            new = self.generator(trainer, [s.sequence for s in active], limits, stops)
            stats.generation_s += time.perf_counter() - t0
            pending = [
                (s, _take_turn(s, turn, tokenizer, set(stops), self.config))
                for s, turn in zip(active, new, strict=True)
            ]
            pending = [(s, calls) for s, calls in pending if calls]
            t1 = time.perf_counter()
            results = self._loop.run(self._send(pending))
            stats.tool_wait_s += time.perf_counter() - t1
            for (state, calls), res in zip(pending, results, strict=True):
                _add_tool_turn(state, calls, res, tokenizer, self.config)
        return states

    def _start(self, prompt: Any, tokenizer: Any) -> _Rollout:
        messages = _messages(prompt)
        question = str(next(m["content"] for m in reversed(messages) if m["role"] == "user"))
        text = tokenizer.apply_chat_template(
            messages, tools=self.tools, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False).input_ids
        grounding = self.groundings.get(question) if self.config.grounded else None
        return _Rollout(question=question, prompt_ids=list(ids), grounding=grounding)

    async def _open_episodes(self, states: Sequence[_Rollout]) -> int:
        """One episode per rollout; a ToolActor that is down leaves ``episode_id`` None (its
        calls then fail as tool errors) and is counted, not raised."""
        opened = await asyncio.gather(*(self._episode(s.grounding) for s in states))
        for state, episode in zip(states, opened, strict=True):
            state.episode_id = episode
        return sum(e is None for e in opened)

    async def _episode(self, grounding: dict[str, Any] | None) -> str | None:
        actor = await self._client()
        for attempt in range(2):
            try:
                return await actor.create_episode(
                    self._toolset_id, seed=self.config.tool_seed, grounding=grounding
                )
            except ServiceUnavailableError as exc:
                log.warning("episode not created, its calls will fail: %s", exc)
                return None
            except ServiceError as exc:
                if exc.code != "toolset_not_found" or attempt:
                    raise
                await self._register_again()
        return None

    async def _register_again(self) -> None:
        """A restarted ToolActor without a shared registry forgot the toolset: register the
        same record again (its id is a digest of the content, so it normally comes back)."""
        assert self._record is not None
        new_id = await (await self._client()).register_toolset(_registration(self._record))
        if new_id != self._toolset_id:
            log.warning("toolset %s is %s on the restarted ToolActor", self._toolset_id, new_id)
            self._record = {**self._record, "id": new_id}

    @property
    def _toolset_id(self) -> str:
        """The resolved id (``__call__`` connects before anything runs on the loop)."""
        assert self._record is not None, "connect() first"
        return str(self._record["id"])

    async def _send(
        self, pending: Sequence[tuple[_Rollout, list[ToolCallItem]]]
    ) -> list[list[ToolResult]]:
        actor = await self._client()
        return list(
            await asyncio.gather(
                *(
                    actor.call_tools(self._toolset_id, calls, episode_id=state.episode_id)
                    for state, calls in pending
                )
            )
        )

    def _log(self, trainer: Any, stats: BatchStats) -> None:
        self.last_stats = stats
        log_metric = getattr(trainer, "_log_metric", None)
        if log_metric is None:
            raise RuntimeError(
                "this TRL has no GRPOTrainer._log_metric; toolsim_trainer is pinned to trl==1.16.0"
            )
        for name, value in stats.metrics().items():
            log_metric(name, value)
        engine_metrics = getattr(self.generator, "batch_metrics", None)
        if callable(engine_metrics):  # EngineGenerator: its prefix cache and weight syncs
            for name, value in engine_metrics().items():
                log_metric(name, value)


def _logprobs(states: Sequence[_Rollout]) -> list[list[float]] | None:
    """Per-token sampling log-probs when the generator gave them for every turn, else None
    (TRL 1.16 accepts None without vLLM, l. 2463; with vLLM its importance-sampling correction
    reads them, l. 2660)."""
    if any(s.logprobs is None for s in states):
        return None
    return [list(s.logprobs or []) for s in states]


def _messages(prompt: Any) -> list[dict[str, Any]]:
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise TypeError(
            "the GRPO dataset's 'prompt' must be a list of chat messages (system + user), "
            f"got {type(prompt).__name__}"
        )
    return prompt


def _registration(record: Mapping[str, Any]) -> dict[str, Any]:
    """A ``POST /v1/toolsets`` body from a ``GET /v1/toolsets/{id}`` record."""
    keys = ("tools", "output_schemas", "stateful", "modes", "live_endpoints")
    return {k: record[k] for k in keys if record.get(k)}


def make_rollout_func(
    config: RolloutConfig,
    actor_client_factory: Callable[[], ActorClient],
    toolset: ToolsetSpec,
    *,
    groundings: Mapping[str, dict[str, Any]] | None = None,
    generator: TurnGenerator = model_generator,
    dynamic_sampling: DynamicSampling | None = None,
) -> ToolRollout:
    """The rollout TRL calls; ``groundings`` maps a question to its episode grounding
    (``data.grounding_of``): TRL passes the rollout only the prompts, not the other columns."""
    return ToolRollout(
        config,
        actor_client_factory,
        toolset,
        groundings=groundings,
        generator=generator,
        dynamic_sampling=dynamic_sampling,
    )
