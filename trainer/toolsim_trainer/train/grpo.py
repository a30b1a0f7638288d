"""Stage 2: GRPO whose rollouts call the ToolActor over HTTP (``toolsim train grpo``).

TRL 1.16's ``GRPOTrainer`` as it is, given our ``rollout_func`` (``train.rollout``) and our
reward functions (``train.rewards``). TRL's own tool loop (``tools=``, ``environment_factory``)
is not used: it runs Python callables in process, while here the tools are a service, so that
the simulated ToolActor, the same toolset in ``live`` mode, or any server with the same contract
is a config change (``toolactor_url``, ``toolset_*``, ``modes``).

DAPO, as exposed by TRL and defaulted here: ``loss_type="dapo"`` (token-level loss normalised
over the accumulated batch), ``epsilon_high=0.28`` (clip-higher), ``mask_truncated_completions``
(a rollout cut by ``max_completion_length`` does not train), ``beta=0`` (no reference model),
and the soft overlong penalty as the ``overlong`` reward, counted on policy tokens only.

Dynamic sampling (DAPO: a group whose rewards are all equal has advantage 0, so with ``beta=0``
no gradient; drop it and sample more) happens in the rollout, with ``dynamic_sampling_retries``:
TRL 1.16 computes rewards and advantages inside the private ``_generate_and_score_completions``
after the rollout has returned, with no hook between the two, and the rollout must return
exactly one row per prompt, so groups cannot be dropped there. Instead the rollout scores each
group with the same reward terms and weights (``group_scorer``; unshuffled, so a control run
redraws as its GRPO run does) and draws a flat group again, up to that many times; TRL then
scores what is returned. ``frac_reward_zero_std`` (TRL) is the share still flat;
``sampling/flat_groups`` the share flat at the first draw.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl.trainer.grpo_config import GRPOConfig

from toolsim_trainer.data import QuestionRow, grounding_of, load_rows, split_rows
from toolsim_trainer.grammar import SYSTEM_PROMPT
from toolsim_trainer.train.common import (
    ConfigError,
    LoraFields,
    add_config_arguments,
    build_lora_config,
    default_model_path,
    load_config,
    shipped_config,
    validate_heldout,
    validate_inputs,
    validate_lora,
)
from toolsim_trainer.train.engine_generator import EngineGenerator
from toolsim_trainer.train.rewards import RewardFunc, RolloutRecord
from toolsim_trainer.train.rollout import (
    DynamicSampling,
    GroupScorer,
    RolloutConfig,
    ToolRollout,
    ToolsetSpec,
    TurnGenerator,
    make_rollout_func,
    model_generator,
    vllm_generator,
)

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "grpo-cpu-demo.yaml"
TOOL_MODES = ("simulated", "live", "record")
GENERATION_BACKENDS = ("trainer", "embedded")


@dataclass
class ToolsimGRPOConfig(GRPOConfig, LoraFields):
    """``GRPOConfig`` plus the model, data, ToolActor, rollout and reward fields of a run."""

    # -- model and data --------------------------------------------------------------------
    model_path: str = field(default_factory=default_model_path)
    """Local base model folder (default: the packaged model, ``toolsim model path``)."""
    adapter_path: str | None = None
    """A LoRA adapter to continue from (an SFT run's ``final/``); None = a fresh adapter."""
    dataset_path: str | None = None
    """Questions with gold answers (``data.load_rows`` formats: HotpotQA/MuSiQue context
    files, ``{question, answer}`` JSONL)."""
    dataset_limit: int | None = None
    """Use at most this many rows of the file."""
    val_fraction: float = 0.0
    """Share of rows held out (never trained on; the eval set when eval_strategy is set)."""

    # -- the tools --------------------------------------------------------------------------
    toolactor_url: str = "http://127.0.0.1:8001"
    """The ToolActor (or any server with its contract) the rollouts call."""
    toolset_id: str | None = None
    """A toolset already registered on the ToolActor."""
    toolset_file: str | None = None
    """A JSON ``POST /v1/toolsets`` body (``tools``, optional ``modes``, ...) to register."""
    tools: list[dict[str, Any]] | None = None
    """Inline OpenAI tool definitions to register (with ``modes``)."""
    modes: dict[str, str] | None = None
    """``simulated`` (default), ``live`` or ``record`` per inline tool."""
    grounded: bool = True
    """Ground each rollout's episode with its row's gold passages (when the row has them)."""
    tool_seed: int | None = 0
    """Episode seed: a group's rollouts get the same observation for the same call."""
    tool_timeout_s: float = 60.0
    """Per-request timeout towards the ToolActor."""
    tool_retries: int = 2
    """Retries of a request on connection errors, timeouts, 429 and 503."""
    tool_concurrency: int = 16
    """Requests in flight to the ToolActor at once."""

    # -- rollout limits -----------------------------------------------------------------------
    max_tool_calls: int = 4
    """Hard cap on calls per rollout; a turn that would pass it is not sent (rollout ends)."""
    max_turns: int = 5
    """Assistant turns per rollout."""
    max_observation_tokens: int = 256
    """A longer tool response is cut before the policy sees it."""

    generation_backend: str = "trainer"
    """Who writes the rollouts' turns without vLLM: ``trainer`` (``generate`` on the trained
    model, TRL's own no-vLLM path) or ``embedded`` (the continuously batched engine with its
    prefix cache, the policy's merged weights loaded into it every step: ``engine_generator``;
    plain temperature sampling only). ``use_vllm`` takes TRL's vLLM engine instead."""

    # -- rewards ---------------------------------------------------------------------------
    reward_em_weight: float = 1.0
    """Weight of ``correctness_em`` (exact match, 0/1)."""
    reward_f1_weight: float = 0.5
    """Weight of ``correctness_f1`` (token F1)."""
    reward_consistency_weight: float = 0.5
    """Weight of ``consistency`` (answer supported by the observations; valid calls)."""
    reward_format_weight: float = 0.25
    """Weight of ``format`` (the grammar holds; -1 for a broken trace)."""
    reward_tool_budget_weight: float = 1.0
    """Weight of ``tool_budget`` (TAPO penalty for calls past ``tool_budget``)."""
    reward_overlong_weight: float = 1.0
    """Weight of ``overlong`` (DAPO soft overlong penalty on policy tokens)."""
    tool_budget: int = 2
    """Calls per rollout before ``tool_budget`` starts to charge."""
    tool_budget_penalty: float = 0.25
    """Charge per call past the budget (the term is floored at -1)."""
    overlong_max_tokens: int | None = None
    """Policy tokens at which ``overlong`` reaches -1 (default ``max_completion_length``)."""
    overlong_buffer: int = 64
    """Width of the linear ramp before ``overlong_max_tokens``."""
    rm_path: str | None = None
    """A trajectory reward model run (``toolsim train rm``); adds the ``rm_score`` term."""
    rm_weight: float = 0.0
    """Weight of ``rm_score``."""
    shuffle_rewards: bool = False
    """Control run: permute the rewards across the batch (seeded by ``seed`` and the step)."""
    dynamic_sampling_retries: int = 0
    """DAPO dynamic sampling: a group whose rollouts all score the same total reward is drawn
    again up to this many times (0: off); each redraw costs a group's generation."""

    # -- DAPO, as TRL exposes it ---------------------------------------------------------------
    loss_type: str = "dapo"
    """``dapo``: token-level loss normalised by the active (policy) tokens of the accumulated
    batch, so long rollouts are not down-weighted (TRL also has grpo, dr_grpo, bnpo, ...)."""
    epsilon_high: float | None = 0.28
    """DAPO's clip-higher: the upper ratio bound 1 + 0.28 (the lower stays 1 - ``epsilon``)."""
    mask_truncated_completions: bool = True
    """A rollout cut by ``max_completion_length`` (its last token no eos) does not train."""
    beta: float = 0.0
    """No KL term, hence no reference model (DAPO drops it for long reasoning)."""

    # -- TRL/transformers defaults changed for this stage ----------------------------------------
    output_dir: str | None = "runs/grpo"
    num_generations: int | None = 4
    max_completion_length: int | None = 512
    logging_steps: float = 1
    report_to: str | list[str] | None = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[no-untyped-call]
        if self.adapter_path is None:
            validate_lora(self)
        self._check_paths()
        self._check_toolset()
        self._check_trl_fields()
        self._check_limits()
        self._check_rewards()

    def _check_paths(self) -> None:
        validate_inputs(self.model_path, self.dataset_path, "FILE (JSON or JSONL)")
        validate_heldout("val_fraction", self.val_fraction, self.eval_strategy, "rows")
        if (
            self.adapter_path is not None
            and not (Path(self.adapter_path) / "adapter_config.json").is_file()
        ):
            raise ConfigError(
                f"adapter_path={self.adapter_path} holds no adapter_config.json; point it at an "
                "SFT run's final/ folder (`toolsim train sft` prints the run folder)"
            )
        if self.rm_path is not None and not Path(self.rm_path).is_dir():
            raise ConfigError(f"rm_path={self.rm_path} is not a reward model run folder")

    def _check_toolset(self) -> None:
        given = [n for n in ("toolset_id", "toolset_file", "tools") if getattr(self, n)]
        if len(given) != 1:
            raise ConfigError(
                "give exactly one of toolset_id (registered on the ToolActor), toolset_file "
                "(a POST /v1/toolsets JSON body) and tools (inline definitions); got "
                f"{given or 'none'}"
            )
        if self.modes and not self.tools:
            raise ConfigError(
                "modes go with inline tools; put them in the toolset_file body, or register the "
                "toolset with its modes and pass toolset_id"
            )
        bad = {k: v for k, v in (self.modes or {}).items() if v not in TOOL_MODES}
        if bad:
            raise ConfigError(f"modes {bad}: each mode is one of {', '.join(TOOL_MODES)}")
        if self.toolset_file is not None and not Path(self.toolset_file).is_file():
            raise ConfigError(f"toolset_file={self.toolset_file} does not exist")
        if not self.toolactor_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"toolactor_url={self.toolactor_url!r} must be an http(s) URL, e.g. "
                "http://127.0.0.1:8001 (`toolsim serve toolactor`)"
            )

    def _check_trl_fields(self) -> None:
        if self.use_transformers_continuous_batching:
            raise ConfigError(
                "the toolsim rollout generates turn by turn with the trainer's model (or TRL's "
                "vLLM engine with use_vllm=true); set use_transformers_continuous_batching=false"
            )
        if self.generation_backend not in GENERATION_BACKENDS:
            raise ConfigError(
                f"generation_backend={self.generation_backend!r}: one of "
                f"{', '.join(GENERATION_BACKENDS)}"
            )
        if self.generation_backend == "embedded":
            if self.use_vllm:
                raise ConfigError(
                    "generation_backend=embedded and use_vllm=true both pick the rollouts' "
                    "engine; keep one (vLLM on a GPU, embedded on a CPU)"
                )
            changed = {
                "top_p": self.top_p != 1.0,
                "top_k": bool(self.top_k),
                "min_p": self.min_p is not None,
                "repetition_penalty": self.repetition_penalty != 1.0,
            }
            unsupported = {name: getattr(self, name) for name, on in changed.items() if on}
            if unsupported:
                raise ConfigError(
                    f"generation_backend=embedded samples with temperature only; {unsupported} "
                    "would be ignored: reset them (top_p=1, top_k=0, min_p unset, "
                    "repetition_penalty=1) or use generation_backend=trainer"
                )
        if self.max_tool_calling_iterations is not None:
            raise ConfigError(
                "max_tool_calling_iterations drives TRL's in-process tool loop, which toolsim "
                "does not use; set max_tool_calls / max_turns instead"
            )
        if self.reward_weights is not None:
            raise ConfigError(
                "reward_weights is built from the reward_*_weight fields (one per term, in "
                "train.rewards order); remove reward_weights and set those"
            )
        if self.max_completion_length is None or self.max_completion_length < 8:
            raise ConfigError(
                f"max_completion_length={self.max_completion_length}: set the completion budget "
                "(policy and tool tokens together), at least 8"
            )

    def _check_limits(self) -> None:
        if self.max_tool_calls < 0 or self.max_turns < 1:
            raise ConfigError(
                f"max_tool_calls={self.max_tool_calls}, max_turns={self.max_turns}: need "
                "max_tool_calls >= 0 and max_turns >= 1"
            )
        if self.max_tool_calls > 0 and self.max_turns < 2:
            raise ConfigError(
                "max_turns=1 leaves no turn to read a tool's answer in; set max_turns >= 2 or "
                "max_tool_calls=0"
            )
        if self.max_observation_tokens < 1:
            raise ConfigError("max_observation_tokens must be >= 1")
        if self.tool_timeout_s <= 0 or self.tool_retries < 0 or self.tool_concurrency < 1:
            raise ConfigError(
                f"tool_timeout_s={self.tool_timeout_s}, tool_retries={self.tool_retries}, "
                f"tool_concurrency={self.tool_concurrency}: need a timeout > 0, retries >= 0 and "
                "concurrency >= 1"
            )

    def _check_rewards(self) -> None:
        if not 0 <= self.tool_budget <= self.max_tool_calls:
            raise ConfigError(
                f"tool_budget={self.tool_budget} must be in [0, max_tool_calls="
                f"{self.max_tool_calls}]: a budget above the hard cap never charges"
            )
        if self.tool_budget_penalty < 0:
            raise ConfigError("tool_budget_penalty must be >= 0 (it is subtracted)")
        if self.dynamic_sampling_retries < 0:
            raise ConfigError(
                f"dynamic_sampling_retries={self.dynamic_sampling_retries}: redraws per flat "
                "group, >= 0 (0 turns dynamic sampling off)"
            )
        limit = self.resolved_overlong_max_tokens
        assert self.max_completion_length is not None
        if limit > self.max_completion_length:
            raise ConfigError(
                f"overlong_max_tokens={limit} exceeds max_completion_length="
                f"{self.max_completion_length}: no rollout can reach it; lower it or leave it unset"
            )
        if not 0 < self.overlong_buffer < limit:
            raise ConfigError(
                f"overlong_buffer={self.overlong_buffer} must be in (0, overlong_max_tokens="
                f"{limit}); e.g. a quarter of it"
            )
        if (self.rm_path is None) != (self.rm_weight == 0):
            raise ConfigError(
                f"rm_path={self.rm_path} and rm_weight={self.rm_weight} go together: set both "
                "(a reward model run and a non-zero weight) or neither"
            )

    @property
    def resolved_overlong_max_tokens(self) -> int:
        limit = self.overlong_max_tokens or self.max_completion_length
        assert limit is not None
        return limit


# ---------------------------------------------------------------------------- the run


def rollout_config(config: ToolsimGRPOConfig) -> RolloutConfig:
    """The rollout's limits, from the run config."""
    assert config.max_completion_length is not None
    return RolloutConfig(
        max_completion_length=config.max_completion_length,
        max_tool_calls=config.max_tool_calls,
        max_turns=config.max_turns,
        max_observation_tokens=config.max_observation_tokens,
        grounded=config.grounded,
        tool_seed=config.tool_seed,
    )


def toolset_spec(config: ToolsimGRPOConfig) -> ToolsetSpec:
    """Which toolset to use: a registered id, or a body to register (file or inline)."""
    if config.toolset_id is not None:
        return ToolsetSpec(id=config.toolset_id)
    if config.toolset_file is not None:
        try:
            body = json.loads(Path(config.toolset_file).read_text("utf-8"))
        except ValueError as exc:
            raise ConfigError(f"toolset_file={config.toolset_file} is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("tools"), list):
            raise ConfigError(
                f"toolset_file={config.toolset_file} must be a JSON object with a 'tools' list "
                "(the POST /v1/toolsets body)"
            )
        return ToolsetSpec(body=body)
    body = {"tools": config.tools, **({"modes": config.modes} if config.modes else {})}
    return ToolsetSpec(body=body)


def prompt_rows(rows: Sequence[QuestionRow]) -> list[dict[str, Any]]:
    """Dataset rows TRL reads: ``prompt`` (system + user messages) and the reward columns."""
    return [
        {
            "prompt": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": row.question},
            ],
            "answers": list(row.answers),
            "question_id": row.id,
        }
        for row in rows
    ]


def load_question_rows(config: ToolsimGRPOConfig) -> tuple[list[QuestionRow], list[QuestionRow]]:
    """(train, held-out) rows; a bad row fails naming its file, line and field."""
    assert config.dataset_path is not None
    rows = load_rows(config.dataset_path, limit=config.dataset_limit)
    train, held_out = split_rows(rows, config.val_fraction, config.seed)
    if not train:
        raise ConfigError(f"{config.dataset_path}: no rows left to train on")
    if config.grounded:
        ungrounded = sum(not r.passages for r in train)
        if ungrounded:
            log.warning(
                "%d of %d rows of %s have no passages: their episodes are not grounded",
                ungrounded,
                len(train),
                config.dataset_path,
            )
    return train, held_out


def run_grpo(config: ToolsimGRPOConfig, callbacks: Sequence[Any] = ()) -> Path:
    """Train (resuming from the newest checkpoint of the run folder); returns the run folder.

    Fails before loading the model when the ToolActor does not answer, naming its URL and the
    command that starts it.
    """
    from toolsim_trainer.clients import ActorClient
    from toolsim_trainer.train.common import prepare_run_dir, resume_point, save_final

    train_rows, held_out = load_question_rows(config)
    generator = turn_generator(config)
    rollout = make_rollout_func(
        rollout_config(config),
        lambda: ActorClient(
            config.toolactor_url,
            timeout_s=config.tool_timeout_s,
            retries=config.tool_retries,
            max_concurrency=config.tool_concurrency,
        ),
        toolset_spec(config),
        groundings={r.question: g for r in train_rows + held_out if (g := grounding_of(r))},
        generator=generator,
    )
    try:
        rollout.connect()
        run_dir = prepare_run_dir(config)
        trainer = build_grpo_trainer(config, rollout, train_rows, held_out, callbacks)
        trainer.train(resume_from_checkpoint=resume_point(config))
        save_final(trainer, trainer.processing_class, run_dir)
    finally:
        rollout.close()
        if isinstance(generator, EngineGenerator):
            generator.close()
    return run_dir


def turn_generator(config: ToolsimGRPOConfig) -> TurnGenerator:
    """What writes the rollouts' turns: TRL's vLLM engine, the embedded one, or the model."""
    if config.use_vllm:
        return vllm_generator
    if config.generation_backend == "embedded":
        return EngineGenerator(
            config.model_path,
            temperature=config.temperature,
            seed=config.seed,
            max_batch_size=max(16, config.generation_batch_size or 0),
        )
    return model_generator


def build_grpo_trainer(
    config: ToolsimGRPOConfig,
    rollout: ToolRollout,
    train_rows: Sequence[QuestionRow],
    held_out: Sequence[QuestionRow],
    callbacks: Sequence[Any] = (),
) -> Any:
    """TRL's ``GRPOTrainer`` with our rollout, rewards, LoRA adapter and metrics file."""
    from datasets import Dataset
    from trl.trainer.grpo_trainer import GRPOTrainer

    from toolsim_trainer.chat_template import load_tokenizer
    from toolsim_trainer.train.common import MetricsCallback
    from toolsim_trainer.train.rewards import build_reward_funcs

    scorer = _load_rm(config.rm_path) if config.rm_path else None
    funcs, weights = build_reward_funcs(config, scorer, tools=rollout.tools)
    if config.dynamic_sampling_retries:
        plain, _ = build_reward_funcs(config, scorer, tools=rollout.tools, shuffle=False)
        assert config.num_generations is not None
        rollout.dynamic_sampling = DynamicSampling(
            score=group_scorer(plain, weights),
            group_size=config.num_generations,
            retries=config.dynamic_sampling_retries,
            answers={r.question: list(r.answers) for r in train_rows},
        )
    # Set after the run folder recorded the config: the resolved config keeps the per-term
    # weights (reloadable), TRL reads the list.
    config.reward_weights = weights
    model, peft_config = _policy(config)
    evaluation = Dataset.from_list(prompt_rows(held_out)) if config.eval_strategy != "no" else None
    return GRPOTrainer(
        model=model,
        reward_funcs=list[Any](funcs),
        args=config,
        train_dataset=Dataset.from_list(prompt_rows(train_rows)),
        eval_dataset=evaluation,
        processing_class=load_tokenizer(config.model_path),
        peft_config=peft_config,
        rollout_func=rollout,
        callbacks=[MetricsCallback(), *callbacks],
    )


def group_scorer(funcs: Sequence[RewardFunc], weights: Sequence[float]) -> GroupScorer:
    """The total reward of each rollout as TRL sums it (weighted terms, a ``None`` counting 0),
    for dynamic sampling to tell a flat group before TRL scores the batch."""

    def score(records: Sequence[RolloutRecord], answers: Sequence[Sequence[str]]) -> list[float]:
        totals = [0.0] * len(records)
        columns = {"rollout": list(records), "answers": [list(a) for a in answers]}
        for func, weight in zip(funcs, weights, strict=True):
            for i, value in enumerate(func([""] * len(records), **columns)):
                if value is not None:
                    totals[i] += weight * value
        return totals

    return score


def _policy(config: ToolsimGRPOConfig) -> tuple[Any, Any]:
    """(model, peft_config): a fresh LoRA adapter, or the SFT adapter made trainable. The base
    model loads as TRL would load it (``model_init_kwargs``; float32 unless a dtype is set)."""
    from trl.trainer.utils import create_model_from_path

    init = config.model_init_kwargs  # a dict once TRL's __post_init__ parsed a JSON string
    kwargs: dict[str, Any] = dict(init) if isinstance(init, dict) else {}
    kwargs.setdefault("local_files_only", True)
    model = create_model_from_path(config.model_path, **kwargs)
    if config.adapter_path is None:
        return model, build_lora_config(config, "CAUSAL_LM")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, config.adapter_path, is_trainable=True), None


def _load_rm(rm_path: str) -> Any:
    from toolsim_trainer.train.rm import load_reward_scorer

    return load_reward_scorer(rm_path)


# ---------------------------------------------------------------------------- CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    """``toolsim train grpo [--config FILE.yaml] [--set key=value]...``."""
    add_config_arguments(p, str(shipped_config(DEFAULT_CONFIG)))
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run GRPO from the CLI; prints the run folder (the only stdout line)."""
    config = load_config(ToolsimGRPOConfig, args.config, args.overrides)
    print(run_grpo(config))
    return 0
