"""The GRPO rollout against a real ToolActor on a free port, over HTTP.

Most tests drive the rollout with a scripted policy (a ``TurnGenerator`` double that writes
fixed turns) so that tool calls, failures and limits happen on cue; the ``slow`` test runs the
packaged model through TRL's own ``GRPOTrainer``. The ToolActor runs the live ``search`` tool
over the shared HotpotQA corpus (fast, deterministic) or simulates it with the scripted LLM
backend double.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.conftest import free_port, packaged_model_dir
from tests.doubles import ScriptedBackend
from toolsim.tools import utility_definitions
from toolsim_toolactor import ActorSettings, create_app
from toolsim_trainer.chat_template import load_tokenizer
from toolsim_trainer.clients import ActorClient, ServiceUnavailableError, parse_prometheus
from toolsim_trainer.data import grounding_of, load_rows
from toolsim_trainer.grammar import (
    IM_END,
    SYSTEM_PROMPT,
    AssistantTurn,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    render_tool_turn,
    render_turn,
)
from toolsim_trainer.train.grpo import group_scorer
from toolsim_trainer.train.rewards import correctness_em, format_reward
from toolsim_trainer.train.rollout import (
    TRUNCATED_MARK,
    DynamicSampling,
    Generated,
    RolloutConfig,
    ToolRollout,
    ToolsetSpec,
    make_rollout_func,
    vllm_generator,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPUS = DATA / "context" / "hotpotqa_train_corpus.json"
SEARCH, SEARCH_OUT = utility_definitions(["search"])["search"]
LIVE_SEARCH = ToolsetSpec(body={"tools": [SEARCH], "modes": {"search": "live"}})
SIMULATED_SEARCH = ToolsetSpec(body={"tools": [SEARCH], "output_schemas": {"search": SEARCH_OUT}})


# ---------------------------------------------------------------------------- fixtures


class ActorServer:
    """A real ToolActor (uvicorn in a thread) on a fixed port that can be stopped and
    started again, forgetting its in-memory registry like a restarted process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ActorServer:
        app = create_app(
            ActorSettings(search_corpus=[CORPUS], live_tools=["search"]), backend=ScriptedBackend()
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the ToolActor did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = None

    def metrics(self) -> dict[str, float]:
        return parse_prometheus(httpx.get(f"{self.url}/metrics", timeout=10).text)


@pytest.fixture
def actor() -> Iterator[ActorServer]:
    server = ActorServer().start()
    try:
        yield server
    finally:
        server.stop()


class FakeTrainer:
    """What the rollout reads from TRL's trainer when a scripted policy writes the turns:
    the tokenizer, the eos ids and ``_log_metric``."""

    def __init__(self) -> None:
        self.processing_class = load_tokenizer(packaged_model_dir())
        self.eos_token_ids = [self.processing_class.eos_token_id]
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def _log_metric(self, name: str, value: float) -> None:
        self.metrics[name].append(value)


@pytest.fixture(scope="module")
def trainer() -> FakeTrainer:
    return FakeTrainer()


class ScriptedPolicy:
    """Writes ``script(k)`` as the turn after ``k`` tool turns (a ``TurnGenerator`` double)."""

    def __init__(self, script: Callable[[int], str]) -> None:
        self.script = script
        self.turns = 0

    def text(self, done: int, index: int) -> str:
        """The turn for the ``index``-th sequence of this call after ``done`` tool turns."""
        return self.script(done)

    def __call__(
        self, trainer: Any, sequences: list[list[int]], limits: list[int], stop_ids: list[int]
    ) -> list[Generated]:
        tok = trainer.processing_class
        out = []
        for index, (sequence, limit) in enumerate(zip(sequences, limits, strict=True)):
            done = tok.decode(sequence).count(f"</tool_response>{IM_END}")
            text = self.text(done, index)
            ids = [*tok(text, add_special_tokens=False).input_ids, stop_ids[0]]
            out.append(Generated(ids[:limit]))
            self.turns += 1
        return out


def call(name: str = "search", **arguments: Any) -> str:
    if name == "search":
        arguments.setdefault("top_k", 2)  # the definition requires it (nullable)
    return render_turn(AssistantTurn("I should search.", (ToolCallItem(name, arguments),)))


def answer(text: str) -> str:
    return render_turn(AssistantTurn("I know it now.", answer=text))


def search_then_answer(k: int) -> str:
    return call(query="Paris capital") if k == 0 else answer("Paris")


def prompts(n: int, question: str = "What is the capital of France?") -> list[Any]:
    return [
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    ] * n


def rollout_for(
    url: str,
    policy: ScriptedPolicy,
    toolset: ToolsetSpec = LIVE_SEARCH,
    *,
    retries: int = 2,
    groundings: dict[str, Any] | None = None,
    **limits: Any,
) -> ToolRollout:
    config = RolloutConfig(**{"max_completion_length": 768, **limits})
    return make_rollout_func(
        config,
        lambda: ActorClient(url, timeout_s=10, retries=retries, backoff_s=0.01),
        toolset,
        groundings=groundings,
        generator=policy,
    )


def decoded(tok: Any, ids: list[int], mask: list[int], keep: int) -> str:
    return str(tok.decode([t for t, m in zip(ids, mask, strict=True) if m == keep]))


# ---------------------------------------------------------------------------- the contract


def test_one_row_per_prompt_tool_tokens_masked_every_call_over_http(
    actor: ActorServer, trainer: FakeTrainer
) -> None:
    rows = load_rows(DATA / "context" / "hotpotqa_train.json", limit=2)
    groundings = {r.question: grounding_of(r) for r in rows}
    batch = [p for r in rows for p in prompts(2, r.question)]  # as TRL sends: each prompt twice
    policy = ScriptedPolicy(search_then_answer)
    rollout = rollout_for(
        actor.url,
        policy,
        groundings=groundings,
        max_completion_length=2048,
        max_observation_tokens=2048,
    )
    try:
        out = rollout(batch, trainer)
    finally:
        rollout.close()
    tok = trainer.processing_class

    assert {len(v) for k, v in out.items() if k != "logprobs"} == {len(batch)}
    assert out["logprobs"] is None
    for ids, mask, rec in zip(out["completion_ids"], out["env_mask"], out["rollout"], strict=True):
        assert len(mask) == len(ids)
        assert rec.stop == "answer" and rec.turns == (search_then_answer(0), answer("Paris"))
        responses = tuple(ToolResponse(c.tool_call_id, c.content) for c in rec.tool_turns[0])
        # exactly the tool turn the Qwen2.5 template renders after "<|im_end|>"
        assert decoded(tok, ids, mask, 0) == "\n" + render_tool_turn(ToolTurn(responses))
        assert decoded(tok, ids, mask, 1) == f"{rec.turns[0]}{IM_END}{rec.turns[1]}{IM_END}"
        assert ids[-1] == tok.eos_token_id
        assert rec.calls[0].ok, rec.calls[0].content
        assert json.loads(rec.calls[0].content)["results"]  # a real BM25 answer
        assert rec.policy_tokens == sum(mask) and rec.tool_tokens == len(mask) - sum(mask)
    prompt_text = tok.decode(out["prompt_ids"][0])
    assert '"name": "search"' in prompt_text and prompt_text.endswith("<|im_start|>assistant\n")

    metrics = actor.metrics()
    assert metrics['toolsim_observations_total{source="live"}'] == len(batch)
    assert metrics['toolsim_requests_total{route="/v1/tool_calls",status="200"}'] == len(batch)
    assert metrics['toolsim_requests_total{route="/v1/episodes",status="201"}'] == len(batch)
    episodes = out["episode_id"]
    assert len(set(episodes)) == len(batch) and None not in episodes
    episode = httpx.get(f"{actor.url}/v1/episodes/{episodes[0]}").json()
    assert episode["grounded"] is True and len(episode["events"]) == 1
    assert trainer.metrics["tools/calls_per_rollout"][-1] == 1.0
    assert trainer.metrics["tools/failure_rate"][-1] == 0.0
    assert trainer.metrics["rollout/stop_answer"][-1] == 1.0
    assert {"timing/generation_s", "timing/tool_wait_s", "tools/cache_hit_rate"} <= set(
        trainer.metrics
    )


def test_the_same_rollout_runs_on_simulated_tools(actor: ActorServer, trainer: FakeTrainer) -> None:
    rollout = rollout_for(actor.url, ScriptedPolicy(search_then_answer), SIMULATED_SEARCH)
    try:
        first = rollout(prompts(2), trainer)
        again = rollout(prompts(2), trainer)
    finally:
        rollout.close()
    # the two calls go out together: one generates, the other joins it or hits the cache
    assert sorted(c.source for r in first["rollout"] for c in r.calls) == ["cache", "simulated"]
    assert trainer.metrics["tools/cache_hit_rate"][-2:] == [0.5, 1.0]
    assert all(r.calls[0].ok for r in again["rollout"])


def test_failed_calls_reach_the_policy_as_tool_errors(
    actor: ActorServer, trainer: FakeTrainer
) -> None:
    turns = {
        0: render_turn(
            AssistantTurn(
                "two calls",
                (
                    ToolCallItem("weather", {"city": "Paris"}),
                    ToolCallItem("search", {"q": 3, "top_k": 1}),
                ),
            )
        ),
        1: call(query="Paris"),
    }
    rollout = rollout_for(actor.url, ScriptedPolicy(lambda k: turns.get(k, answer("Paris"))))
    try:
        out = rollout(prompts(1), trainer)
    finally:
        rollout.close()
    rec = out["rollout"][0]
    assert [(c.ok, c.code) for c in rec.calls] == [
        (False, "tool_not_found"),
        (False, "invalid_arguments"),
        (True, None),
    ]
    assert rec.stop == "answer"  # the rollout went on after the errors
    tool_text = decoded(trainer.processing_class, out["completion_ids"][0], out["env_mask"][0], 0)
    assert tool_text.count('{"error": {"code": "tool_not_found"') == 1
    assert trainer.metrics["tools/failures"][-1] == 2.0
    assert trainer.metrics["tools/failure_rate"][-1] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- the ToolActor's health


def test_toolactor_down_at_start_fails_fast_with_url_and_command(trainer: FakeTrainer) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rollout = rollout_for(url, ScriptedPolicy(search_then_answer), retries=0)
    try:
        with pytest.raises(ServiceUnavailableError) as info:
            rollout.connect()
    finally:
        rollout.close()
    assert url in str(info.value) and "toolsim serve toolactor" in str(info.value)


def test_toolactor_killed_mid_training_then_restarted(trainer: FakeTrainer) -> None:
    server = ActorServer().start()
    rollout = rollout_for(server.url, ScriptedPolicy(search_then_answer), retries=1)
    try:
        assert all(r.calls[0].ok for r in rollout(prompts(2), trainer)["rollout"])
        server.stop()
        down = rollout(prompts(2), trainer)
        assert [c.code for r in down["rollout"] for c in r.calls] == ["tool_unavailable"] * 2
        assert all(r.stop == "answer" for r in down["rollout"])  # the policy read the error
        assert trainer.metrics["tools/failure_rate"][-1] == 1.0
        assert trainer.metrics["tools/episode_failures"][-1] == 2.0
        server.start()  # a new process: its registry forgot the toolset
        back = rollout(prompts(2), trainer)
        assert all(r.calls[0].ok and r.episode_id for r in back["rollout"])
        assert trainer.metrics["tools/failure_rate"][-1] == 0.0
    finally:
        rollout.close()
        server.stop()


def test_simulator_flags_reach_the_rewards(trainer: FakeTrainer) -> None:
    """Until the ToolActor flags observations, a server with the same contract does."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if path == "/v1/toolsets":
            return httpx.Response(201, json={"id": "ts_x", "tools": [SEARCH]})
        if path == "/v1/toolsets/ts_x":
            return httpx.Response(200, json={"id": "ts_x", "tools": [SEARCH]})
        if path == "/v1/episodes":
            return httpx.Response(201, json={"episode_id": "ep_1", "toolset_id": "ts_x"})
        calls = json.loads(request.content)["tool_calls"]
        return httpx.Response(
            200,
            json={
                "messages": [
                    {"role": "tool", "tool_call_id": c["id"], "content": "{}"} for c in calls
                ],
                "observations": [
                    {
                        "tool_call_id": c["id"],
                        "source": "simulated",
                        "latency_ms": 1,
                        "fidelity": "low",
                    }
                    for c in calls
                ],
            },
        )

    def client() -> ActorClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        return ActorClient("http://fake", http=http)

    rollout = make_rollout_func(
        RolloutConfig(), client, LIVE_SEARCH, generator=ScriptedPolicy(search_then_answer)
    )
    try:
        rec = rollout(prompts(1), trainer)["rollout"][0]
    finally:
        rollout.close()
    assert rec.calls[0].flags == ("fidelity",) and rec.flagged
    assert trainer.metrics["tools/flagged_rate"][-1] == 1.0


class FakeVLLM:
    """``trainer.vllm_generation`` as TRL 1.16 shapes its answer (``VLLMGeneration.generate``):
    the whole ``max_completion_length`` budget per call, eos included, then tokens past it, and
    per-token lists of log-probs whose first entry is the sampled token's."""

    def __init__(self, trainer: FakeTrainer, policy: ScriptedPolicy) -> None:
        self.trainer, self.policy = trainer, policy
        self.calls: list[int] = []

    def generate(
        self, prompts: list[list[int]], images: Any, num_generations: int
    ) -> tuple[Any, list[list[int]], list[list[list[float | None]]], None]:
        assert images is None and num_generations == 1
        self.calls.append(len(prompts))
        turns = self.policy(self.trainer, prompts, [10_000] * len(prompts), [2])
        completions = [[*t.ids, 2, 2] for t in turns]  # vLLM may pad past the eos
        logprobs: list[list[list[float | None]]] = [
            [[-0.5, -3.0] if j else [None] for j in range(len(c))] for c in completions
        ]
        return prompts, completions, logprobs, None


def test_the_vllm_turn_generator_keeps_sampling_logprobs(actor: ActorServer) -> None:
    trainer = FakeTrainer()
    engine = FakeVLLM(trainer, ScriptedPolicy(search_then_answer))
    trainer.vllm_generation = engine  # type: ignore[attr-defined]
    rollout = make_rollout_func(
        RolloutConfig(max_completion_length=768),
        lambda: ActorClient(actor.url),
        LIVE_SEARCH,
        generator=vllm_generator,
    )
    try:
        out = rollout(prompts(2), trainer)
    finally:
        rollout.close()
    assert engine.calls == [2, 2]  # one call per turn for all rollouts, each its own prompt
    for ids, mask, logprobs, rec in zip(
        out["completion_ids"], out["env_mask"], out["logprobs"], out["rollout"], strict=True
    ):
        assert rec.stop == "answer" and len(logprobs) == len(ids)
        policy = [lp for lp, m in zip(logprobs, mask, strict=True) if m == 1]
        nan = [lp for lp in policy if lp != lp]  # vLLM's None is NaN, as TRL maps it
        assert len(nan) == len(rec.turns) and {lp for lp in policy if lp == lp} == {-0.5}
        assert {lp for lp, m in zip(logprobs, mask, strict=True) if m == 0} == {0.0}


# ---------------------------------------------------------------------------- dynamic sampling


class DrawPolicy(ScriptedPolicy):
    """Answers right away; call ``k`` of the generator answers ``draws[k][row]``."""

    def __init__(self, draws: list[list[str]]) -> None:
        super().__init__(lambda k: "")
        self.draws = draws
        self.calls = 0

    def __call__(
        self, trainer: Any, sequences: list[list[int]], limits: list[int], stop_ids: list[int]
    ) -> list[Generated]:
        self.calls += 1
        return super().__call__(trainer, sequences, limits, stop_ids)

    def text(self, done: int, index: int) -> str:
        return answer(self.draws[self.calls - 1][index])


def sampling(retries: int) -> DynamicSampling:
    """Scored as GRPO scores: exact match and format, weighted (``grpo.group_scorer``)."""
    return DynamicSampling(
        score=group_scorer([correctness_em, format_reward], [1.0, 0.25]),
        group_size=2,
        retries=retries,
        answers={"Capital of France?": ["Paris"], "Capital of Italy?": ["Rome"]},
    )


def two_groups() -> list[Any]:
    return prompts(2, "Capital of France?") + prompts(2, "Capital of Italy?")


def draw(
    url: str, trainer: FakeTrainer, draws: list[list[str]]
) -> tuple[dict[str, Any], DrawPolicy, int]:
    """Two groups rolled out with dynamic sampling (2 retries): the rollout's output, the
    policy, and where this call's metrics start in ``trainer.metrics``."""
    policy = DrawPolicy(draws)
    rollout = rollout_for(url, policy)
    rollout.dynamic_sampling = sampling(retries=2)
    before = len(trainer.metrics["sampling/redraws"])
    try:
        return rollout(two_groups(), trainer), policy, before
    finally:
        rollout.close()


def test_dynamic_sampling_redraws_only_a_flat_group(
    actor: ActorServer, trainer: FakeTrainer
) -> None:
    """France's group scores alike (both wrong); Italy's differs. Only France's is drawn
    again (one generator call for its two rows), and the redraw, which differs, replaces it."""
    out, policy, before = draw(
        actor.url, trainer, [["Lyon", "Nice", "Rome", "Milan"], ["Paris", "Lyon"]]
    )
    assert [r.answer for r in out["rollout"]] == ["Paris", "Lyon", "Rome", "Milan"]
    assert policy.calls == 2 and len(out["completion_ids"]) == 4
    tok = trainer.processing_class
    assert "Paris" in decoded(tok, out["completion_ids"][0], out["env_mask"][0], keep=1)
    assert trainer.metrics["sampling/flat_groups"][before:] == [0.5]
    assert trainer.metrics["sampling/redraws"][before:] == [1.0]
    assert trainer.metrics["sampling/flat_groups_left"][before:] == [0.0]


def test_dynamic_sampling_keeps_a_group_still_flat_after_its_retries(
    actor: ActorServer, trainer: FakeTrainer
) -> None:
    always_wrong = [["Lyon", "Nice", "Rome", "Milan"], ["Lyon", "Lyon"], ["Nice", "Nice"]]
    out, policy, before = draw(actor.url, trainer, always_wrong)
    assert policy.calls == 3  # the first draw, then two redraws of France's group
    assert len(out["rollout"]) == 4 and {r.answer for r in out["rollout"][:2]} <= {"Lyon", "Nice"}
    assert trainer.metrics["sampling/redraws"][before:] == [2.0]
    assert trainer.metrics["sampling/flat_groups_left"][before:] == [0.5]


# ---------------------------------------------------------------------------- limits


def test_a_policy_that_never_stops_calling_tools_is_cut_at_the_budget(
    actor: ActorServer, trainer: FakeTrainer
) -> None:
    policy = ScriptedPolicy(lambda k: call(query=f"Paris France {k}"))
    rollout = rollout_for(
        actor.url, policy, max_tool_calls=3, max_turns=10, max_observation_tokens=32
    )
    try:
        out = rollout(prompts(2), trainer)
    finally:
        rollout.close()
    for rec, ids in zip(out["rollout"], out["completion_ids"], strict=True):
        assert rec.stop == "tool_limit"
        assert len(rec.calls) == 3 and rec.requested_calls == 4 and len(rec.turns) == 4
        assert ids[-1] == trainer.processing_class.eos_token_id  # ended, not truncated
        assert all(c.content.endswith(TRUNCATED_MARK) for c in rec.calls)
    assert actor.metrics()['toolsim_observations_total{source="live"}'] == 6


def test_turn_and_length_limits(actor: ActorServer, trainer: FakeTrainer) -> None:
    forever = ScriptedPolicy(lambda k: call(query=f"Paris France {k}"))
    turns = rollout_for(actor.url, forever, max_tool_calls=8, max_turns=2)
    short = rollout_for(actor.url, forever, max_completion_length=120, max_observation_tokens=500)
    try:
        by_turns = turns(prompts(1), trainer)["rollout"][0]
        cut = short(prompts(1), trainer)
    finally:
        turns.close()
        short.close()
    assert by_turns.stop == "turn_limit" and len(by_turns.calls) == 1 and len(by_turns.turns) == 2
    rec, ids = cut["rollout"][0], cut["completion_ids"][0]
    assert rec.stop == "length" and len(ids) == 120
    assert ids[-1] != trainer.processing_class.eos_token_id  # TRL sees a truncated completion
    assert cut["env_mask"][0][-1] == 0  # cut inside the observation


# ---------------------------------------------------------------------------- the real policy


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch's OpenMP threads spin while they wait: on two cores shared with other jobs, two
    threads generate about 8x slower than one (measured: 16 tokens in 120-150 s vs 16 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_packaged_model_rollout_through_trl(actor: ActorServer, tmp_path: Path) -> None:
    from toolsim_trainer.train.grpo import ToolsimGRPOConfig, build_grpo_trainer, load_question_rows

    config = ToolsimGRPOConfig(
        output_dir=str(tmp_path),
        model_path=str(packaged_model_dir()),
        dataset_path=str(DATA / "context" / "hotpotqa_train.json"),
        dataset_limit=2,
        toolactor_url=actor.url,
        tools=[SEARCH],
        modes={"search": "live"},
        max_completion_length=40,
        overlong_buffer=8,
        num_generations=2,
        per_device_train_batch_size=2,
        max_steps=1,
        lora_r=2,
        report_to=[],
        bf16=False,
        use_cpu=True,
    )
    train, held_out = load_question_rows(config)
    rollout = make_rollout_func(
        RolloutConfig(max_completion_length=40),
        lambda: ActorClient(actor.url),
        LIVE_SEARCH,
    )
    try:
        trl_trainer = build_grpo_trainer(config, rollout, train, held_out)
        batch = [p for r in train[:1] for p in prompts(2, r.question)]
        out = rollout(batch, trl_trainer)
    finally:
        rollout.close()
    tok = trl_trainer.processing_class
    assert len(out["completion_ids"]) == len(batch)
    for ids, mask, rec in zip(out["completion_ids"], out["env_mask"], out["rollout"], strict=True):
        assert 0 < len(ids) == len(mask) <= 40
        assert rec.policy_tokens == sum(mask)
        policy_text = decoded(tok, ids, mask, 1)
        assert policy_text.startswith(rec.turns[0])  # what the model wrote, append-only
    sent = sum(len(r.calls) for r in out["rollout"])
    assert actor.metrics().get('toolsim_observations_total{source="live"}', 0.0) == sent
    assert rollout.last_stats.generation_s > 0
