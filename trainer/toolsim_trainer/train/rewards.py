"""GRPO rewards: small pure functions of a rollout, each logged on its own by TRL.

Every reward has TRL's shape ``(completions, **kwargs) -> list[float | None]``. TRL passes each
dataset column and each extra key the rollout returns as a keyword argument holding one value
per completion; these functions read two of them:

- ``rollout``: a ``RolloutRecord`` per completion (built by ``train.rollout``). Rewards read the
  record and not ``completions``, because TRL decodes completions with
  ``skip_special_tokens=True``: the ChatML turn boundaries are gone from that text, and the tool
  responses sit in it next to the policy's words.
- ``answers``: the gold answers of the row (answer + aliases).

TRL logs each function as ``rewards/<__name__>/mean`` and ``/std``, so each term here has a
stable name. A function may return ``None`` for a completion it cannot judge; TRL turns it into
NaN, leaves it out of the logged mean and counts it as 0 in the weighted sum.

The terms (weights are config, see ``build_reward_funcs``):

==================  ==============================================================  =========
name                what it scores                                                  range
==================  ==============================================================  =========
correctness_em      exact match of the answer against every gold answer (SQuAD)     0 / 1
correctness_f1      best token F1 against the gold answers                          [0, 1]
consistency         MTR internal consistency: the answer is in the observations     -1 / 0 / 1
                    the rollout received; every call named a tool of the toolset
                    with valid arguments; no ``<tool_response>`` written by the
                    policy
format              the grammar holds in every finished turn and the trace answers  -1 / 0 / 1
tool_budget         TAPO: a penalty per call past the budget                        [-1, 0]
overlong            DAPO soft overlong penalty on *policy* tokens only              [-1, 0]
rm_score            the trajectory reward model's score (optional)                  model's
==================  ==============================================================  =========

Simulator failures are not the policy's: an observation the ToolActor flags (``quality`` or
``fidelity`` in ``observations[]``) makes ``consistency``'s "answer not in the observations"
penalty neutral (0), and a failure of the tool service itself (``tool_unavailable``, 5xx) is
never an "invalid call". Correctness has no penalty term (a wrong answer scores 0, its floor),
so flags leave it as it is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from toolsim_trainer.answers import answer_in_text, exact_match, f1_score
from toolsim_trainer.grammar import (
    AssistantTurn,
    GrammarError,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    Trace,
    Turn,
    extract_answer,
    parse_turn,
    trace_to_messages,
)

RewardFunc = Callable[..., list[float | None]]
"""TRL's callable reward: ``(prompts=, completions=, completion_ids=, **columns)``."""


class ConversationScorer(Protocol):
    """Scores OpenAI chat conversations rendered with their tools
    (``train.rm.load_reward_scorer`` returns one)."""

    def __call__(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        tools: Sequence[list[dict[str, Any]] | None] | None = None,
    ) -> list[float]: ...


POLICY_FAULT_CODES = frozenset({"invalid_arguments", "invalid_tool_call", "tool_not_found"})
"""ToolActor error codes that mean the policy's call was wrong (400/404), not the service."""


# ---------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class CallRecord:
    """One tool call the rollout sent, and what came back (an error is an observation too)."""

    name: str
    arguments: dict[str, Any]
    tool_call_id: str
    content: str
    ok: bool
    code: str | None = None
    source: str | None = None
    flags: tuple[str, ...] = ()

    @property
    def policy_fault(self) -> bool:
        """The ToolActor refused the call itself: unknown tool or arguments off the schema."""
        return not self.ok and self.code in POLICY_FAULT_CODES


@dataclass(frozen=True)
class RolloutRecord:
    """What one rollout did, as the rewards see it.

    ``turns[i]`` is the text of the i-th assistant turn (without ``<|im_end|>``);
    ``tool_turns[i]`` the calls sent after it (empty when none were). ``stop`` says why the
    rollout ended: ``answer``, ``no_action`` (a turn with neither calls nor a parsable answer),
    ``tool_limit`` (calls past ``max_tool_calls``, not sent), ``turn_limit`` or ``length``
    (``max_completion_length`` reached).
    """

    question: str
    turns: tuple[str, ...]
    tool_turns: tuple[tuple[CallRecord, ...], ...]
    stop: str
    requested_calls: int
    policy_tokens: int
    tool_tokens: int = 0
    last_turn_complete: bool = True
    episode_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def calls(self) -> list[CallRecord]:
        return [c for turn in self.tool_turns for c in turn]

    @property
    def flagged(self) -> bool:
        """Some observation was flagged by the simulator as unreliable."""
        return any(c.flags for c in self.calls)

    @property
    def answer(self) -> str | None:
        """The final turn's ``<answer>``, read leniently (a broken turn still has one)."""
        return extract_answer(self.turns[-1]) if self.turns else None

    def finished_turns(self) -> tuple[str, ...]:
        """Turns the policy closed with ``<|im_end|>`` (a turn cut by the length limit is not)."""
        return self.turns if self.last_turn_complete else self.turns[:-1]

    def grammar_error(self) -> GrammarError | None:
        """The first grammar error in a finished turn."""
        for text in self.finished_turns():
            parsed = parse_turn(text)
            if isinstance(parsed, GrammarError):
                return parsed
        return None

    def observations_text(self) -> str:
        """Everything the tools answered successfully: what an answer may be supported by."""
        return "\n".join(c.content for c in self.calls if c.ok)

    def to_trace(self) -> Trace | None:
        """The rollout as a grammar ``Trace`` (None when a turn breaks the grammar)."""
        turns: list[Turn] = []
        for text, calls in zip(self.turns, self.tool_turns, strict=True):
            parsed = parse_turn(text)
            if isinstance(parsed, GrammarError):
                return None
            items = (
                tuple(ToolCallItem(c.name, c.arguments, c.tool_call_id) for c in calls)
                or parsed.tool_calls
            )
            turns.append(AssistantTurn(parsed.think, items, parsed.answer))
            if calls:
                turns.append(
                    ToolTurn(tuple(ToolResponse(c.tool_call_id, c.content) for c in calls))
                )
        return Trace(question=self.question, turns=turns)


def _records(kwargs: dict[str, Any], n: int) -> list[RolloutRecord]:
    """The ``rollout`` column, checked: a reward used without our rollout fails loudly."""
    records = kwargs.get("rollout")
    if records is None or len(records) != n:
        raise ValueError(
            "toolsim rewards need the 'rollout' records that train.rollout returns "
            f"(got {type(records).__name__} for {n} completions); build the trainer with "
            "rollout_func=make_rollout_func(...)"
        )
    return list(records)


def _golds(kwargs: dict[str, Any], n: int) -> list[Sequence[str]]:
    answers = kwargs.get("answers")
    if answers is None or len(answers) != n:
        raise ValueError("correctness rewards need the dataset column 'answers' (a list of str)")
    return [[a] if isinstance(a, str) else list(a) for a in answers]


# ---------------------------------------------------------------------------- the terms


def correctness_em(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1 when the answer matches a gold answer after SQuAD normalisation, else 0."""
    records, golds = _records(kwargs, len(completions)), _golds(kwargs, len(completions))
    return [exact_match(r.answer, g) for r, g in zip(records, golds, strict=True)]


def correctness_f1(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """The best token F1 of the answer against the gold answers (partial credit)."""
    records, golds = _records(kwargs, len(completions)), _golds(kwargs, len(completions))
    return [f1_score(r.answer, g) for r, g in zip(records, golds, strict=True)]


def consistency(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """MTR internal consistency of each rollout (see ``consistency_of``)."""
    return [consistency_of(r) for r in _records(kwargs, len(completions))]


def consistency_of(record: RolloutRecord) -> float:
    """-1 for an invented ``<tool_response>`` or a call the ToolActor refused (unknown tool,
    invalid arguments); otherwise, for a rollout that answers, +1 when the answer appears in
    the observations it received and -1 when it does not (0 when a flagged observation may be
    why); 0 for a rollout without an answer (``format`` scores that)."""
    if any("<tool_response>" in text for text in record.turns):
        return -1.0
    if any(c.policy_fault for c in record.calls):
        return -1.0
    answer = record.answer
    if answer is None:
        return 0.0
    if answer_in_text([answer], record.observations_text()):
        return 1.0
    return 0.0 if record.flagged else -1.0


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """Grammar of each rollout (see ``format_of``)."""
    return [format_of(r) for r in _records(kwargs, len(completions))]


format_reward.__name__ = "format"


def format_of(record: RolloutRecord) -> float:
    """-1 when a finished turn breaks the grammar; +1 when every turn holds and the trace
    ends with an answer; 0 when it holds but the rollout was cut before answering."""
    if record.grammar_error() is not None:
        return -1.0
    return 1.0 if record.stop == "answer" else 0.0


def make_tool_budget_reward(budget: int, penalty_per_call: float) -> RewardFunc:
    """TAPO's budget term: ``-penalty_per_call`` per call requested past ``budget``, at
    least -1. Calls the rollout refused to send (past ``max_tool_calls``) count: asking for
    them is the behaviour being priced."""

    def tool_budget(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        records = _records(kwargs, len(completions))
        return [tool_budget_of(r.requested_calls, budget, penalty_per_call) for r in records]

    return tool_budget


def tool_budget_of(calls: int, budget: int, penalty_per_call: float) -> float:
    return -min(1.0, max(0, calls - budget) * penalty_per_call)


def make_overlong_reward(max_tokens: int, buffer_tokens: int) -> RewardFunc:
    """DAPO's soft overlong punishment counted on policy tokens only.

    TRL's ``trl.rewards.get_soft_overlong_punishment`` counts ``completion_ids``, which in a
    multi-turn rollout include the tool responses: a long observation would be charged to the
    policy. Here the length is ``RolloutRecord.policy_tokens`` (the ``env_mask == 1`` tokens).
    """

    def overlong(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        records = _records(kwargs, len(completions))
        return [overlong_of(r.policy_tokens, max_tokens, buffer_tokens) for r in records]

    return overlong


def overlong_of(length: int, max_tokens: int, buffer_tokens: int) -> float:
    """0 up to ``max - buffer`` tokens, then linearly down to -1 at ``max``, -1 beyond."""
    start = max_tokens - buffer_tokens
    if length <= start:
        return 0.0
    if length <= max_tokens:
        return (start - length) / buffer_tokens
    return -1.0


def make_rm_reward(scorer: ConversationScorer, tools: list[dict[str, Any]]) -> RewardFunc:
    """The trajectory reward model's score of each grammatical rollout (None for a broken
    one, which the RM was never trained on; ``format`` already gives it -1). ``tools`` are
    the definitions the prompts were rendered with, as in the RM's training data."""

    def rm_score(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        records = _records(kwargs, len(completions))
        traces = [r.to_trace() for r in records]
        conversations = [trace_to_messages(t) for t in traces if t is not None]
        scored = scorer(conversations, [tools] * len(conversations)) if conversations else []
        scores = iter(scored)
        return [None if t is None else float(next(scores)) for t in traces]

    return rm_score


def shuffled(func: RewardFunc, seed: int) -> RewardFunc:
    """The control run: ``func``'s rewards permuted across the batch.

    The permutation depends only on ``seed``, the global step and the batch size, so every
    reward function of one batch is permuted the same way (the total reward moves as one) and
    a rerun permutes identically.
    """

    def permuted(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        rewards = func(completions, **kwargs)
        state = kwargs.get("trainer_state")
        step = int(getattr(state, "global_step", 0))
        order = list(range(len(rewards)))
        random.Random(seed * 1_000_003 + step).shuffle(order)
        return [rewards[i] for i in order]

    permuted.__name__ = func.__name__
    return permuted


# ---------------------------------------------------------------------------- assembly


class RewardSettings(Protocol):
    """The config fields the rewards read (``ToolsimGRPOConfig`` has them all)."""

    @property
    def reward_em_weight(self) -> float: ...
    @property
    def reward_f1_weight(self) -> float: ...
    @property
    def reward_consistency_weight(self) -> float: ...
    @property
    def reward_format_weight(self) -> float: ...
    @property
    def reward_tool_budget_weight(self) -> float: ...
    @property
    def reward_overlong_weight(self) -> float: ...
    @property
    def tool_budget(self) -> int: ...
    @property
    def tool_budget_penalty(self) -> float: ...
    @property
    def overlong_max_tokens(self) -> int | None: ...
    @property
    def overlong_buffer(self) -> int: ...
    @property
    def max_completion_length(self) -> int | None: ...
    @property
    def rm_weight(self) -> float: ...
    @property
    def shuffle_rewards(self) -> bool: ...
    @property
    def seed(self) -> int: ...


def build_reward_funcs(
    config: RewardSettings,
    rm_scorer: ConversationScorer | None = None,
    *,
    tools: list[dict[str, Any]] | None = None,
    shuffle: bool | None = None,
) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions and their weights (TRL's ``reward_weights``), in one order.

    Every term is built even at weight 0 so that it is still logged; ``rm_score`` is added
    only with a scorer (the caller loads it from ``rm_path``). ``shuffle`` (default: the
    config's ``shuffle_rewards``) wraps each term in ``shuffled``.
    """
    max_tokens = config.overlong_max_tokens or config.max_completion_length
    if max_tokens is None:
        raise ValueError("the overlong reward needs overlong_max_tokens or max_completion_length")
    terms: list[tuple[RewardFunc, float]] = [
        (correctness_em, config.reward_em_weight),
        (correctness_f1, config.reward_f1_weight),
        (consistency, config.reward_consistency_weight),
        (format_reward, config.reward_format_weight),
        (
            make_tool_budget_reward(config.tool_budget, config.tool_budget_penalty),
            config.reward_tool_budget_weight,
        ),
        (make_overlong_reward(max_tokens, config.overlong_buffer), config.reward_overlong_weight),
    ]
    if rm_scorer is not None:
        terms.append((make_rm_reward(rm_scorer, list(tools or [])), config.rm_weight))
    funcs = [f for f, _ in terms]
    if config.shuffle_rewards if shuffle is None else shuffle:
        funcs = [shuffled(f, config.seed) for f in funcs]
    return funcs, [w for _, w in terms]
