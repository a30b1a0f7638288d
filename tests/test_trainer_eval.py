"""``toolsim eval``: every tool mode through a real ToolActor on a free port, resume, failures.

The fast tests drive the eval with a scripted policy (it calls ``search`` once, then answers
the first result's title), so tool calls really travel over HTTP and the ToolActor's
``/metrics`` can be checked; the ToolActor's simulator is the cheap scripted backend. The
``slow`` tests put the packaged model in the policy's seat, and start the ToolActor as a
subprocess (``toolsim serve toolactor``, the embedded model behind it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ThreadedServer, free_port, packaged_model_dir
from tests.doubles import ScriptedBackend
from toolsim_toolactor import ActorSettings, create_app
from toolsim_trainer.agent import AgentLimits
from toolsim_trainer.clients import ServiceUnavailableError, parse_prometheus
from toolsim_trainer.data import DatasetError
from toolsim_trainer.eval_results import (
    format_table,
    plot_comparison,
    read_results,
    summarize,
    summarize_records,
)
from toolsim_trainer.evaluate import (
    EvalConfig,
    EvalError,
    command,
    configure_parser,
    evaluate,
    question_seed,
)
from toolsim_trainer.grammar import AssistantTurn, ToolCallItem, render_turn
from toolsim_trainer.policy import Policy, PolicyOutput
from toolsim_trainer.stats import bootstrap_ci

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CORPUS = [
    {"title": "Leonardo da Vinci", "text": "Leonardo da Vinci painted the Mona Lisa."},
    {"title": "Nile", "text": "The Nile is the river that flows through Cairo."},
    {"title": "Canberra", "text": "Canberra is the capital city of Australia."},
    {"title": "Sydney Opera House", "text": "A performing arts venue in Sydney."},
]
ROWS = [
    {"id": "q1", "question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci",
     "passages": [CORPUS[0]]},
    {"id": "q2", "question": "Which river flows through Cairo?", "answer": ["Nile", "River Nile"],
     "passages": [CORPUS[1]]},
    {"id": "q3", "question": "What is the capital of Australia?", "answer": "Canberra"},
]  # fmt: skip


class SearchThenAnswer(Policy):
    """Calls ``search`` with the question, then answers the first result's title."""

    name = "scripted"

    def __init__(self, hang_on: str | None = None) -> None:
        self.asked: list[str] = []
        self.tools_seen: list[list[str]] = []
        self.hang_on = hang_on
        self.hanging = asyncio.Event()

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        question = str(messages[1]["content"])
        self.asked.append(question)
        self.tools_seen.append([t["function"]["name"] for t in tools])
        if question == self.hang_on:
            self.hanging.set()
            await asyncio.Event().wait()  # never answers: the run is interrupted here
        last = messages[-1]
        if last["role"] == "tool":
            results = json.loads(last["content"]).get("results") or [{"title": "nothing"}]
            return PolicyOutput(
                f"<think>read it</think>\n<answer>{results[0]['title']}</answer>", "stop"
            )
        if not tools:
            return PolicyOutput("<think>no tools</think>\n<answer>unknown</answer>", "stop")
        call = ToolCallItem("search", {"query": question})
        return PolicyOutput(render_turn(AssistantTurn("look it up", (call,))), "stop")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-data")
    corpus, rows = root / "corpus.json", root / "toy.jsonl"
    corpus.write_text(json.dumps(CORPUS))
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return {"corpus": corpus, "rows": rows}


@pytest.fixture(scope="module")
def actor_url(files: dict[str, Path]) -> Iterator[str]:
    """A real ToolActor (uvicorn, free port) with live BM25 search over the toy corpus."""
    settings = ActorSettings(search_corpus=[files["corpus"]], live_tools=["search"])
    with ThreadedServer(create_app(settings, backend=ScriptedBackend())) as server:
        yield server.url


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(url)


async def metrics(url: str) -> dict[str, float]:
    return parse_prometheus((await get(f"{url}/metrics")).text)


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def config(files: dict[str, Path], out: Path, **kwargs: Any) -> EvalConfig:
    kwargs.setdefault("progress", False)
    return EvalConfig(data=files["rows"], output=out, **kwargs)


LIVE = 'toolsim_observations_total{source="live"}'
SIMULATED = 'toolsim_observations_total{source="simulated"}'
EPISODES = 'toolsim_requests_total{route="/v1/episodes",status="201"}'


@pytest.mark.parametrize("tools", ["none", "simulated", "live"])
async def test_each_tool_mode_reaches_the_toolactor_over_http(
    tools: str, files: dict[str, Path], actor_url: str, tmp_path: Path
) -> None:
    policy = SearchThenAnswer()
    url = None if tools == "none" else actor_url
    before = await metrics(actor_url)
    summary = await evaluate(
        config(files, tmp_path / "r.jsonl", tools=tools, toolactor_url=url), policy
    )
    after = await metrics(actor_url)

    records = read_results(tmp_path / "r.jsonl")
    assert sorted(r["id"] for r in records) == ["q1", "q2", "q3"]
    assert all(r["status"] == "answered" for r in records)
    calls = 0 if tools == "none" else 3
    assert delta(before, after, EPISODES) == calls  # one episode per question
    assert delta(before, after, LIVE) == (calls if tools == "live" else 0)
    assert delta(before, after, SIMULATED) == (calls if tools == "simulated" else 0)
    assert policy.tools_seen[0] == ([] if tools == "none" else ["search"])
    assert summary.n == 3 and summary.tool_calls == (0 if tools == "none" else 1)
    if tools == "live":  # BM25 finds the passage titled with the answer: EM 1 everywhere
        assert [r["prediction"] for r in sorted(records, key=lambda r: r["index"])] == [
            "Leonardo da Vinci", "Nile", "Canberra"]  # fmt: skip
        assert summary.em == 1.0 and summary.f1 == 1.0
        assert all(r["calls"][0]["source"] == "live" for r in records)
    else:  # the scripted simulator answers "value_<seed>"; no tools: "unknown"
        assert summary.em == 0.0
    assert summary.grammar_error_rate == 0.0 and summary.failed == 0


async def test_grounded_simulation_grounds_each_episode_on_its_row(
    files: dict[str, Path], actor_url: str, tmp_path: Path
) -> None:
    cfg = config(
        files, tmp_path / "g.jsonl", tools="simulated", grounded=True, toolactor_url=actor_url
    )
    await evaluate(cfg, SearchThenAnswer())
    records = {r["id"]: r for r in read_results(tmp_path / "g.jsonl")}
    assert {k: r["grounded"] for k, r in records.items()} == {"q1": True, "q2": True, "q3": False}
    episode = (await get(f"{actor_url}/v1/episodes/{records['q1']['episode_id']}")).json()
    assert episode["grounded"] is True
    assert [(e["tool"], e["arguments"]) for e in episode["events"]] == [
        ("search", {"query": ROWS[0]["question"]})
    ]  # the call went into the question's own episode
    assert len({r["episode_id"] for r in records.values()}) == 3  # one episode per question


async def test_same_seed_same_results(
    files: dict[str, Path], actor_url: str, tmp_path: Path
) -> None:
    runs = []
    for name in ("a", "b"):
        cfg = config(
            files, tmp_path / f"{name}.jsonl", tools="simulated", toolactor_url=actor_url, seed=7
        )
        await evaluate(cfg, SearchThenAnswer())
        runs.append(
            {
                r["id"]: (r["seed"], r["prediction"], r["raw_turns"])
                for r in read_results(cfg.output)
            }
        )
    assert runs[0] == runs[1]
    assert runs[0]["q1"][0] == question_seed(7, "q1") != question_seed(8, "q1")


async def test_interrupted_run_resumes_without_duplicates(
    files: dict[str, Path], actor_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    cfg = config(files, out, tools="live", toolactor_url=actor_url, concurrency=1)
    hanging = SearchThenAnswer(hang_on=ROWS[2]["question"])
    stuck = asyncio.create_task(evaluate(cfg, hanging))
    await asyncio.wait_for(hanging.hanging.wait(), 30)
    stuck.cancel()  # as Ctrl-C would, with the third question in flight
    with pytest.raises(asyncio.CancelledError):
        await stuck
    first_two = out.read_text()
    assert [r["id"] for r in read_results(out)] == ["q1", "q2"]
    out.write_text(first_two + first_two.splitlines()[0][:40])  # plus a torn write

    policy = SearchThenAnswer()
    summary = await evaluate(cfg, policy)
    assert policy.asked == [ROWS[2]["question"]] * 2  # only q3 ran (its two turns)
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q1", "q2", "q3"]
    assert out.read_text().startswith(first_two)  # finished records kept byte for byte
    assert summary.n == 3 and summary.em == 1.0


async def test_unreachable_toolactor_fails_questions_then_rerun_resumes(
    files: dict[str, Path], actor_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    dead = f"http://127.0.0.1:{free_port()}"
    summary = await evaluate(
        config(files, out, tools="live", toolactor_url=dead, tool_retries=1), SearchThenAnswer()
    )
    records = read_results(out)
    assert summary.failed == 3 and summary.failed_share == 1.0 and summary.n == 0
    assert all(
        r["status"] == "failed" and dead in r["failure"] and "2 tries" in r["failure"]
        for r in records
    )

    summary = await evaluate(
        config(files, out, tools="live", toolactor_url=actor_url), SearchThenAnswer()
    )
    records = read_results(out)
    assert sorted(r["id"] for r in records) == ["q1", "q2", "q3"]  # failed ones replaced
    assert summary.failed == 0 and summary.em == 1.0


async def test_actor_going_down_mid_run_fails_only_the_questions_it_hits(
    files: dict[str, Path], tmp_path: Path
) -> None:
    settings = ActorSettings(search_corpus=[files["corpus"]], live_tools=["search"])
    out = tmp_path / "r.jsonl"
    server = ThreadedServer(create_app(settings, backend=ScriptedBackend()))

    class StopsTheActor(SearchThenAnswer):
        async def complete(
            self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], **kw: Any
        ) -> PolicyOutput:
            if messages[1]["content"] == ROWS[1]["question"] and len(messages) == 2:
                server.__exit__()  # the ToolActor dies before q2's call
            return await super().complete(messages, tools, **kw)

    with server:
        cfg = config(
            files, out, tools="live", toolactor_url=server.url, concurrency=1, tool_retries=1
        )
        summary = await evaluate(cfg, StopsTheActor())
    by_id = {r["id"]: r for r in read_results(out)}
    assert by_id["q1"]["status"] == "answered"
    assert by_id["q2"]["status"] == "failed" and "tool_unavailable" in by_id["q2"]["failure"]
    assert by_id["q3"]["status"] == "failed"  # its episode could not be created
    assert summary.failed == 2 and summary.n == 1


async def test_refused_toolset_stops_the_run_with_the_reason(
    files: dict[str, Path], actor_url: str, tmp_path: Path
) -> None:
    cfg = config(
        files,
        tmp_path / "r.jsonl",
        tools="simulated",
        toolactor_url=actor_url,
        toolset_id="ts_missing",
    )
    with pytest.raises(EvalError, match="refused toolset ts_missing"):
        await evaluate(cfg, SearchThenAnswer())


def test_command_reports_a_refused_toolset_before_reaching_the_policy(
    files: dict[str, Path], actor_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(files["rows"]), "--tools", "simulated", "--toolactor-url", actor_url]
    argv += ["--policy", "openai", "--url", f"http://127.0.0.1:{free_port()}/v1", "--model", "m"]
    args = parse([*argv, "--toolset-id", "ts_missing", "--out-dir", str(tmp_path), "--no-progress"])
    assert command(args) == 1
    assert "refused toolset ts_missing" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no results file: nothing ran


async def test_an_unreachable_policy_endpoint_fails_fast(
    files: dict[str, Path], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = config(files, tmp_path / "r.jsonl", policy="openai", url=dead, model="m", mode="native")
    with pytest.raises(ServiceUnavailableError, match=f"{dead}/models does not answer"):
        await evaluate(cfg)
    assert not cfg.output.exists()


async def test_results_of_another_configuration_are_not_mixed(
    files: dict[str, Path], actor_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    await evaluate(config(files, out, tools="live", toolactor_url=actor_url), SearchThenAnswer())
    with pytest.raises(ValueError, match="another configuration"):
        await evaluate(config(files, out, tools="none"), SearchThenAnswer())


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="toolsim eval")
    configure_parser(parser)
    return parser.parse_args(argv)


def test_command_names_the_file_and_line_of_a_bad_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q1?", "answer": "A"}\n{"question": "Q2?"}\n')
    args = parse([str(bad), "--out-dir", str(tmp_path / "out"), "--no-progress"])
    with pytest.raises(DatasetError, match=rf"{bad}:2: missing field 'answer'"):
        command(args)
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tools", "live", "--grounded"], "grounded applies to simulated tools only"),
        (["--policy", "openai"], "policy openai needs url"),
        (
            ["--adapter", "x", "--policy", "openai", "--url", "http://h/v1", "--model", "m"],
            "adapter goes with policy local",
        ),
        (["--tools", "none", "--corpus", "c.json"], "need tools simulated or live"),
        (["--concurrency", "0"], "concurrency must be >= 1"),
    ],
)
def test_command_rejects_contradictory_options(
    argv: list[str], message: str, files: dict[str, Path]
) -> None:
    with pytest.raises(ValueError, match=message):
        command(parse([str(files["rows"]), *argv]))


async def test_command_runs_every_file_then_prints_table_and_plot(
    files: dict[str, Path], actor_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = tmp_path / "none.jsonl"
    await evaluate(config(files, earlier, tools="none", run_name="no-tools"), SearchThenAnswer())
    live = tmp_path / "live.jsonl"
    await evaluate(
        config(files, live, tools="live", toolactor_url=actor_url, run_name="bm25"),
        SearchThenAnswer(),
    )
    png = tmp_path / "cmp.png"
    code = await asyncio.to_thread(
        command, parse(["--compare", str(earlier), str(live), "--plot", str(png)])
    )
    out = capsys.readouterr().out
    assert code == 0
    table = out.splitlines()
    assert table[0].split()[:3] == ["benchmark", "run", "n"]
    assert [line.split()[1] for line in table[1:3]] == ["bm25", "no-tools"]
    assert "1.000 [1.000, 1.000]" in table[1]
    assert table[-1] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- statistics


def test_bootstrap_ci_brackets_the_mean_and_is_seeded() -> None:
    values = [i / 99 for i in range(100)]  # mean 0.5, sd 0.2916, standard error 0.0292
    low, high = bootstrap_ci(values, n=2000, seed=1)
    assert low < 0.5 < high
    assert high - low == pytest.approx(2 * 1.96 * 0.0292, rel=0.1)  # the normal interval
    assert bootstrap_ci(values, n=2000, seed=1) == (low, high)
    assert bootstrap_ci(values, n=2000, seed=2) != (low, high)


def test_bootstrap_ci_edge_cases() -> None:
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert bootstrap_ci([0.3]) == (pytest.approx(0.3), pytest.approx(0.3))
    narrow = bootstrap_ci([0.0, 1.0] * 500)
    wide = bootstrap_ci([0.0, 1.0] * 5)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=95)


def record(
    i: int, em: float, status: str = "answered", session: str = "s", calls: int = 1
) -> dict[str, Any]:
    return {"id": str(i), "run": "r", "benchmark": "b", "status": status, "em": em, "f1": em,
            "cover": em, "tool_calls": calls, "session": session,
            "started_at": 100.0 + i, "finished_at": 101.0 + i}  # fmt: skip


def test_summary_counts_failed_apart_and_throughput_over_sessions() -> None:
    records = [record(0, 1.0), record(1, 0.0, "grammar_error", calls=0), record(2, 0.0, "failed")]
    records += [record(10, 1.0, session="t"), record(11, 1.0, session="t")]
    s = summarize_records(records)
    assert (s.n, s.failed, s.failed_share) == (4, 1, 0.2)
    assert s.em == 0.75 and s.grammar_error_rate == 0.25 and s.tool_calls == 0.75
    # session s spans 100..103 s, t spans 110..112 s: 5 questions in 5 s
    assert s.questions_per_minute == pytest.approx(60.0)
    assert s.statuses == {"answered": 3, "grammar_error": 1, "failed": 1}
    empty = summarize_records([record(0, 0.0, "failed")])
    assert empty.n == 0 and math.isnan(empty.em) and empty.failed_share == 1.0
    assert "nan" in format_table([empty])


def test_summarize_groups_by_run_and_benchmark_and_plots(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [
        record(0, 1.0),
        {**record(1, 0.0), "run": "other"},
        {**record(2, 1.0), "benchmark": "c"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "torn')
    summaries = summarize([path])
    assert sorted((s.run, s.benchmark, s.n) for s in summaries) == [
        ("other", "b", 1),
        ("r", "b", 1),
        ("r", "c", 1),
    ]
    png = plot_comparison(summaries, tmp_path / "p.png")
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 1000 and height > 300


def test_a_broken_line_inside_a_results_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record(0, 1.0)) + "\nnot json\n" + json.dumps(record(1, 1.0)) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON record"):
        read_results(path)


# ---------------------------------------------------------------------------- the real model


@pytest.mark.slow
async def test_packaged_model_as_policy_in_every_mode(actor_url: str, tmp_path: Path) -> None:
    from toolsim_trainer.local_policy import LocalPolicy

    # One thread: on a shared 2-core machine two oversubscribed torch threads run 2-7x slower.
    policy = LocalPolicy(packaged_model_dir(), max_batch_size=4, num_threads=1)

    def cfg(tools: str, name: str, concurrency: int = 3) -> EvalConfig:
        return EvalConfig(
            data=DATA / "eval" / "2wiki_500.jsonl", output=tmp_path / f"{name}.jsonl",
            tools=tools, limit=3, progress=False, concurrency=concurrency,  # type: ignore[arg-type]
            toolactor_url=None if tools == "none" else actor_url,
            limits=AgentLimits(max_tokens=32, max_turns=2),
        )  # fmt: skip

    def turns(path: Path) -> list[list[str]]:
        return [r["raw_turns"] for r in sorted(read_results(path), key=lambda r: r["index"])]

    try:
        for tools in ("none", "simulated", "live"):
            before = await metrics(actor_url)
            summary = await evaluate(cfg(tools, tools), policy)
            after = await metrics(actor_url)
            records = read_results(tmp_path / f"{tools}.jsonl")
            assert sorted(r["id"] for r in records) == ["1", "2", "3"]
            assert all(r["raw_turns"] and r["completion_tokens"] > 0 for r in records)
            assert summary.n == 3 and summary.failed == 0
            assert delta(before, after, EPISODES) == (0 if tools == "none" else 3)
            # whatever tool calls the untrained model managed arrived as this mode's observations
            calls = sum(r["tool_calls"] for r in records)
            assert delta(before, after, LIVE) == (calls if tools == "live" else 0)
            assert delta(before, after, SIMULATED) == (calls if tools == "simulated" else 0)
        # greedy, one question at a time: the same text twice (batched bf16 may flip near-ties)
        await evaluate(cfg("none", "seq1", concurrency=1), policy)
        await evaluate(cfg("none", "seq2", concurrency=1), policy)
        assert turns(tmp_path / "seq1.jsonl") == turns(tmp_path / "seq2.jsonl")
    finally:
        await policy.aclose()


@pytest.mark.slow
async def test_corpus_option_starts_a_toolactor_subprocess(
    files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = config(files, tmp_path / "r.jsonl", tools="live", corpus=files["corpus"])
    summary = await evaluate(cfg, SearchThenAnswer())
    assert summary.em == 1.0 and summary.tool_calls == 1.0


def test_default_run_names_say_which_policy_and_tools() -> None:
    def name(**kw: Any) -> str:
        return EvalConfig(data=Path("d/2wiki_500.jsonl"), output=Path("o"), **kw).name

    assert name() == "base-none"
    assert name(adapter=Path("runs/sft1/final"), tools="live") == "sft1-live"
    assert (
        name(adapter=Path("runs/grpo2"), tools="simulated", grounded=True)
        == "grpo2-simulated-grounded"
    )
    assert name(policy="openai", url="http://h/v1", model="qwen", mode="native") == "qwen-none"
    assert name(run_name="mine") == "mine"
    assert EvalConfig(data=Path("d/2wiki_500.jsonl"), output=Path("o")).benchmark == "2wiki_500"
