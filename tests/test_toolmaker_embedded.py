"""The ToolMaker on the real packaged model, in process: real questions become strict,
validated toolsets with their utility tools merged, and asking again costs no generation."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from toolsim.llm.factory import build_backend
from toolsim.registry import MemoryRegistry
from toolsim_toolmaker import MakerSettings, create_app
from toolsim_toolmaker.taxonomy import DEFAULT_UTILITIES, TASK_CLASSES
from toolsim_toolmaker.validation import check_strict_tool

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "context"


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
async def maker() -> AsyncIterator[httpx.AsyncClient]:
    s = settings()
    app = create_app(s, backend=build_backend(s), registry=MemoryRegistry())
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
