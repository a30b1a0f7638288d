"""The ToolMaker on the real packaged model, in process: real questions become strict,
validated toolsets with their utility tools merged, and asking again costs no generation."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from toolsim.llm.base import LLMBackend
from toolsim.llm.factory import build_backend
from toolsim.registry import MemoryRegistry
from toolsim_toolmaker import MakerSettings, create_app
from toolsim_toolmaker.generation import ToolGenerator
from toolsim_toolmaker.metrics import MakerMetrics
from toolsim_toolmaker.taxonomy import DEFAULT_UTILITIES, TASK_CLASSES
from toolsim_toolmaker.validation import check_strict_tool

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "context"
LABELLED = Path(__file__).resolve().parent / "data" / "task_kinds.json"
CLASSIFICATION_FLOOR = 0.39
"""Least share of ``LABELLED`` classified right. Measured: 11 of 23 (0.48) on SmolLM2-135M
(float32, greedy; the same alone or batched, on 1 or 2 threads): lookup 5/5, math 3/5,
booking 3/5, programming 0/4, other 0/4 (most misses taken for lookups). Answering
``lookup`` to everything scores 5 of 23 (0.22); the floor, 9 of 23, leaves two tasks for
numeric differences between CPUs and dtypes."""


def questions() -> list[str]:
    """Two HotpotQA questions and one MuSiQue question, always the same ones."""
    picked: list[str] = []
    for name, count in (("hotpotqa_train.json", 2), ("musique_train.json", 1)):
        path = DATA / name
        if not path.is_file():
            pytest.fail(f"no data at {path}: the shared data folder is missing")
        records = json.loads(path.read_text())
        picked += [r["question"] for r in records[:count]]
    return picked


def settings() -> MakerSettings:
    s = MakerSettings()
    if not (s.resolved_model_dir / "config.json").is_file():
        pytest.fail(f"no model at {s.resolved_model_dir}: run `toolsim model fetch` first")
    return s


def counter(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[LLMBackend]:
    """One model for the module (the ToolMaker's lifespan starting it again is a no-op)."""
    llm = build_backend(settings())
    await llm.start()
    yield llm
    await llm.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def maker(backend: LLMBackend) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings(), backend=backend, registry=MemoryRegistry())
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://maker", timeout=600
        )
        yield client
        await client.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def made(maker: httpx.AsyncClient) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request body, toolset) for each question, generated concurrently so they share batches."""
    bodies = [{"task": q, "max_tools": 2, "seed": 0} for q in questions()]
    responses = await asyncio.gather(*(maker.post("/v1/toolsets", json=b) for b in bodies))
    for r in responses:
        assert r.status_code == 201, r.text
    return [(b, r.json()) for b, r in zip(bodies, responses, strict=True)]


@pytest.mark.asyncio(loop_scope="module")
async def test_real_questions_become_strict_toolsets(
    made: list[tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    for _, toolset in made:
        assert toolset["id"].startswith("ts_")
        assert toolset["task_class"] in TASK_CLASSES
        names = [t["function"]["name"] for t in toolset["tools"]]
        assert len(names) == len(set(names)), names
        utilities = set(DEFAULT_UTILITIES[toolset["task_class"]])
        assert utilities <= set(names), f"{utilities} not merged into {names}"
        generated = [t for t in toolset["tools"] if t["function"]["name"] not in utilities]
        assert 1 <= len(generated) <= 2, names
        for i, tool in enumerate(generated):
            assert tool["function"].get("strict") is True
            output = toolset["output_schemas"][tool["function"]["name"]]
            check_strict_tool(tool, output, f"tools[{i}]")
            Draft202012Validator.check_schema(tool["function"]["parameters"])
            Draft202012Validator.check_schema(output)


@pytest.mark.asyncio(loop_scope="module")
async def test_asking_again_returns_the_same_toolset_without_generating(
    maker: httpx.AsyncClient, made: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    before = (await maker.get("/metrics")).text
    for body, toolset in made:
        again = await maker.post("/v1/toolsets", json=body)
        assert again.status_code == 201, again.text
        assert again.json() == toolset
        stored = await maker.get(f"/v1/toolsets/{toolset['id']}")
        assert stored.status_code == 200 and stored.json() == toolset
    after = (await maker.get("/metrics")).text
    generations = "toolmaker_generations_total"
    assert counter(after, generations) == counter(before, generations)
    hits = "toolmaker_generation_cache_hits_total"
    assert counter(after, hits) == counter(before, hits) + len(made)


@pytest.mark.asyncio(loop_scope="module")
async def test_classification_is_measured_on_labelled_tasks(backend: LLMBackend) -> None:
    labelled = json.loads(LABELLED.read_text())["tasks"]
    assert {t["kind"] for t in labelled} == set(TASK_CLASSES), "every task kind is labelled"
    generator = ToolGenerator(backend, MakerMetrics(), attempts=1, temperature=0.0, max_tokens=64)
    got = await asyncio.gather(*(generator.classify(t["task"], 0) for t in labelled))
    confusion = Counter((t["kind"], kind) for t, kind in zip(labelled, got, strict=True))
    right = sum(n for (want, kind), n in confusion.items() if want == kind)
    accuracy = right / len(labelled)
    assert accuracy >= CLASSIFICATION_FLOOR, (
        f"{right}/{len(labelled)} ({accuracy:.2f}) classified right, floor "
        f"{CLASSIFICATION_FLOOR}; labelled -> classified: {confusion_table(confusion)}"
    )


def confusion_table(confusion: Counter[tuple[str, str]]) -> str:
    """``kind: classified n, ...`` per labelled kind, on one line."""
    rows = []
    for want in TASK_CLASSES:
        cells = [f"{kind} {n}" for (label, kind), n in sorted(confusion.items()) if label == want]
        rows.append(f"{want}: {', '.join(cells)}")
    return "; ".join(rows)
