"""Injected faults: every kind on every face (``/v1/tool_calls``, REST, MCP), never cached,
counted per kind, reproducible from the seed, and a retry draws anew."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from tests.conftest import WEATHER_OUTPUT, WEATHER_TOOL, AppClient, ThreadedServer, tool_call
from tests.doubles import ScriptedBackend
from tests.test_mcp import mcp_session
from toolsim_toolactor import ActorSettings, create_app
from toolsim_toolactor.faults import BODY_FAULTS, FAULT_KINDS, HTTP_FAULTS, latency_ms
from toolsim_toolactor.protocol import LognormalLatency

EXPECTED = {  # kind -> (status, code, Retry-After)
    "rate_limit": (429, "rate_limited", "1"),
    "server_error": (500, "tool_server_error", None),
    "unavailable": (503, "tool_unavailable", "1"),
    "timeout": (504, "tool_timeout", None),
}
CITY = '{"city": "Oslo"}'


def policy(kind: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"seed": 5, "rates": {kind: 1.0} if kind else {}, "timeout_ms": 50, **extra}


@pytest_asyncio.fixture
async def actor() -> AsyncIterator[tuple[AppClient, ScriptedBackend]]:
    backend = ScriptedBackend()
    app = create_app(ActorSettings(), backend=backend)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a")
        yield AppClient(app, client), backend
        await client.aclose()


async def toolset(actor: AppClient, faults: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {
        "tools": [WEATHER_TOOL],
        "output_schemas": {"get_weather": WEATHER_OUTPUT},
    }
    if faults is not None:
        body["faults"] = faults
    r = await actor.http.post("/v1/toolsets", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def calls_body(ts: str, **extra: Any) -> dict[str, Any]:
    return {"toolset_id": ts, "tool_calls": [tool_call("get_weather", CITY)], **extra}


def counted(metrics: str, kind: str) -> float:
    sample = f'toolsim_faults_total{{kind="{kind}"}} '
    return next((float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(sample)), 0.0)


@pytest.mark.parametrize("kind", HTTP_FAULTS)
async def test_http_faults_on_tool_calls_and_rest(
    actor: tuple[AppClient, ScriptedBackend], kind: str
) -> None:
    app, backend = actor
    status, code, retry_after = EXPECTED[kind]
    ts = await toolset(app, policy(kind))
    started = time.perf_counter()
    r = await app.http.post("/v1/tool_calls", json=calls_body(ts))
    elapsed = time.perf_counter() - started
    rest = await app.http.post(f"/v1/toolsets/{ts}/tools/get_weather", json={"city": "Oslo"})
    for response in (r, rest):
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert response.headers["x-toolsim-fault"] == kind
        assert response.headers.get("retry-after") == retry_after
    if kind == "timeout":
        assert elapsed >= 0.05  # the caller waited timeout_ms
    assert backend.calls == []  # nothing was generated, so nothing could be cached
    assert counted((await app.http.get("/metrics")).text, kind) == 2
    plain = await toolset(app, None)  # same tool, no faults: same cache key
    clean = await app.http.post("/v1/tool_calls", json=calls_body(plain))
    assert clean.json()["observations"][0]["source"] == "simulated"


@pytest.mark.parametrize("kind", BODY_FAULTS)
async def test_body_faults_on_tool_calls_and_rest(
    actor: tuple[AppClient, ScriptedBackend], kind: str
) -> None:
    app, _ = actor
    ts = await toolset(app, policy(kind))
    r = await app.http.post("/v1/tool_calls", json=calls_body(ts))
    assert r.status_code == 200, r.text
    assert r.json()["observations"][0]["fault"] == kind
    body = r.json()["messages"][0]["content"]
    rest = await app.http.post(f"/v1/toolsets/{ts}/tools/get_weather", json={"city": "Oslo"})
    assert rest.status_code == 200 and rest.headers["x-toolsim-fault"] == kind
    bodies = [body, rest.content.decode()]
    plain = await toolset(app, None)
    clean = await app.http.post("/v1/tool_calls", json=calls_body(plain))
    clean_body = clean.json()["messages"][0]["content"]
    assert orjson.loads(clean_body)["city"]  # the clean observation is whole JSON
    for faulted in bodies:
        if kind == "empty":
            assert orjson.loads(faulted) == {"city": "", "temperature": 0, "conditions": ""}
        else:
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(faulted)
    if kind == "truncated":  # the real observation, cut; only the whole one was cached
        assert clean.json()["observations"][0]["source"] == "cache"
        assert all(clean_body.startswith(b) and len(b) < len(clean_body) for b in bodies)
        assert bodies[0] != bodies[1]  # the second call is another occurrence: another cut
    else:  # made without the simulator: nothing was cached
        assert bodies[0] == bodies[1]
        assert clean.json()["observations"][0]["source"] == "simulated"
    assert counted((await app.http.get("/metrics")).text, kind) == 2


async def test_every_fault_kind_on_the_mcp_face() -> None:
    backend = ScriptedBackend()
    with ThreadedServer(create_app(ActorSettings(), backend=backend)) as server:
        http = httpx.AsyncClient(base_url=server.url)
        for kind in FAULT_KINDS:
            body = {
                "tools": [WEATHER_TOOL],
                "output_schemas": {"get_weather": WEATHER_OUTPUT},
                "faults": policy(kind),
            }
            ts = (await http.post("/v1/toolsets", json=body)).json()["id"]
            async with mcp_session(f"{server.url}/v1/toolsets/{ts}/mcp") as session:
                result = await session.call_tool("get_weather", {"city": "Oslo"})
            meta = (result.meta or {}).get("toolsim", {})
            assert meta.get("fault") == kind, (kind, result)
            text = result.content[0].text  # type: ignore[union-attr]
            if kind in HTTP_FAULTS:
                status, code, retry_after = EXPECTED[kind]
                assert result.is_error and text.startswith(f"{code}: ")
                assert meta["status"] == status
                assert meta.get("retry_after_s") == (int(retry_after) if retry_after else None)
            elif kind == "empty":
                assert not result.is_error
                assert result.structured_content == {"city": "", "temperature": 0, "conditions": ""}
            else:  # not JSON: MCP has no successful result without structured content
                assert result.is_error
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(text)
            assert counted((await http.get("/metrics")).text, kind) == 1
        await http.aclose()


async def test_faults_are_reproducible_from_the_seed_and_retries_draw_anew() -> None:
    mixed = policy(None, rates={"rate_limit": 0.3, "empty": 0.3})

    async def outcomes() -> list[str]:
        app = create_app(ActorSettings(), backend=ScriptedBackend())
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a")
            actor = AppClient(app, http)
            ts = await toolset(actor, mixed)
            ep = (await http.post("/v1/episodes", json={"toolset_id": ts, "seed": 9})).json()
            seen = []
            for _ in range(16):  # the same call, retried within the episode
                r = await http.post(
                    "/v1/tool_calls", json=calls_body(ts, episode_id=ep["episode_id"])
                )
                info = r.json()["observations"][0] if r.status_code == 200 else {}
                seen.append(str(r.status_code) + ":" + str(info.get("fault")))
            events = (await http.get(f"/v1/episodes/{ep['episode_id']}")).json()["events"]
            assert len(events) == 16  # faulted calls are events too: that is what advances
            await http.aclose()
        return seen

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert {"429:None", "200:empty", "200:None"} <= set(first)


async def test_latency_is_added_and_counted(actor: tuple[AppClient, ScriptedBackend]) -> None:
    app, _ = actor
    ts = await toolset(app, policy(None, latency_ms={"distribution": "constant", "ms": 40}))
    started = time.perf_counter()
    r = await app.http.post("/v1/tool_calls", json=calls_body(ts))
    assert time.perf_counter() - started >= 0.04
    assert r.json()["observations"][0]["latency_ms"] >= 40
    metrics = (await app.http.get("/metrics")).text
    assert "toolsim_fault_delay_seconds_total 0.04" in metrics
    spread = LognormalLatency(distribution="lognormal", median_ms=200, sigma=0.5)
    assert latency_ms(spread, 0.5) == pytest.approx(200)
    assert latency_ms(spread, 0.9) == pytest.approx(200 * 1.8980, rel=1e-3)


async def test_an_episode_policy_replaces_the_toolset_policy(
    actor: tuple[AppClient, ScriptedBackend],
) -> None:
    app, _ = actor
    ts = await toolset(app, policy("rate_limit"))
    calm = await app.http.post("/v1/episodes", json={"toolset_id": ts, "faults": policy(None)})
    r = await app.http.post(
        "/v1/tool_calls", json=calls_body(ts, episode_id=calm.json()["episode_id"])
    )
    assert r.status_code == 200
    failing = await app.http.post("/v1/episodes", json={"toolset_id": ts})
    r = await app.http.post(
        "/v1/tool_calls", json=calls_body(ts, episode_id=failing.json()["episode_id"])
    )
    assert r.status_code == 429


async def test_bad_policies_are_refused_and_faults_are_part_of_the_toolset(
    actor: tuple[AppClient, ScriptedBackend],
) -> None:
    app, _ = actor
    base = {"tools": [WEATHER_TOOL]}
    too_much = await app.http.post(
        "/v1/toolsets", json={**base, "faults": {"rates": {"timeout": 0.6, "empty": 0.6}}}
    )
    assert too_much.status_code == 400 and "at most 1" in too_much.json()["error"]["message"]
    unknown = await app.http.post("/v1/toolsets", json={**base, "faults": {"tools": ["nope"]}})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "faults.tools"
    plain = await toolset(app, None)
    faulty = await toolset(app, policy("empty"))
    assert plain != faulty
    assert (await app.http.get(f"/v1/toolsets/{faulty}")).json()["faults"]["rates"]["empty"] == 1
    inline = await app.http.post("/v1/tool_calls", json={**calls_body(plain), "faults": policy()})
    assert inline.status_code == 400
