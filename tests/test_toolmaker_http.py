"""ToolMaker over real parts: OpenAPI import through HTTP, toolsets kept by a restarted Redis
(AOF), the python tool's bad programs answered as bounded tool errors through the ToolActor."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import RedisServer, start_app, tool_call
from tests.doubles import ScriptedBackend
from tests.test_openapi_import import PETSTORE_30
from toolsim.tools import utility_definitions
from toolsim_toolmaker import MakerSettings, create_app
from toolsim_toolmaker.validation import check_strict_tool


async def maker(**settings: Any) -> tuple[httpx.AsyncClient, Any]:
    app = create_app(MakerSettings(**settings), backend=ScriptedBackend())
    life = app.router.lifespan_context(app)
    await life.__aenter__()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://maker"), life


async def test_openapi_document_becomes_a_toolset_the_toolactor_serves() -> None:
    client, life = await maker()
    try:
        r = await client.post("/v1/toolsets/import", json=PETSTORE_30)
        assert r.status_code == 201, r.text
        toolset = r.json()
        names = {t["function"]["name"] for t in toolset["tools"]}
        assert "listPets" in names
        assert toolset["stateful"]["listPets"] is False  # GET reads; writes are stateful
        assert any(toolset["stateful"].values())
        for tool in toolset["tools"]:  # "strict" only where the strict subset holds throughout
            if tool["function"].get("strict"):
                check_strict_tool(tool, toolset["output_schemas"][tool["function"]["name"]], "t")
        bad = await client.post("/v1/toolsets/import", json={"openapi": "3.0.3", "paths": {}})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_tool_definition"
        not_object = await client.post("/v1/toolsets/import", json=[1, 2])
        assert not_object.status_code == 400
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


@pytest.mark.redis
async def test_a_restarted_redis_keeps_every_toolset(redis_server: RedisServer) -> None:
    client, life = await maker(redis_url=redis_server.url)
    try:
        ids = []
        for seed in range(3):
            r = await client.post(
                "/v1/toolsets", json={"task": f"Who wrote book number {seed}?", "seed": seed}
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        imported = (await client.post("/v1/toolsets/import", json=PETSTORE_30)).json()["id"]
        redis_server.stop()  # SIGTERM: Redis flushes its append-only file and exits
        down = await client.get(f"/v1/toolsets/{ids[0]}")
        assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
        assert (await client.get("/ready")).status_code == 503
        redis_server.start()
        for _ in range(100):  # polling a server: no event to wait on
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        for toolset_id in [*ids, imported]:
            got = await client.get(f"/v1/toolsets/{toolset_id}")
            assert got.status_code == 200, got.text
        listing = (await client.get("/v1/toolsets", params={"limit": 100})).json()
        assert listing["total"] == 4 and {t["id"] for t in listing["data"]} == {*ids, imported}
        # the generation cache survived too: the same task and seed cost no generation
        before = (await client.get("/metrics")).text
        again = await client.post(
            "/v1/toolsets", json={"task": "Who wrote book number 1?", "seed": 1}
        )
        assert again.json()["id"] == ids[1]
        after = (await client.get("/metrics")).text
        assert _generations(after) == _generations(before)
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


def _generations(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("toolmaker_generations_total "))
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("code", "check"),
    [
        ("while True: pass", lambda o: o["timed_out"] is True),
        (
            "x = bytearray(2 * 1024**3)",
            lambda o: o["exit_code"] != 0 and "MemoryError" in o["stderr"],
        ),
        ("open('/root/escape.txt', 'w').write('x')", lambda o: o["exit_code"] != 0),
        (
            "import socket; socket.create_connection(('127.0.0.1', 1), timeout=1)",
            lambda o: o["exit_code"] != 0,
        ),
        ("print(sum(range(10)))", lambda o: o["stdout"].strip() == "45" and o["exit_code"] == 0),
    ],
)
async def test_python_tool_bad_programs_are_bounded_tool_errors(code: str, check: Any) -> None:
    python, python_out = utility_definitions(["python"])["python"]
    _, client, life = await start_app(ScriptedBackend(), live_tools=["python"])
    try:
        started = time.monotonic()
        r = await client.post(
            "/v1/tool_calls",
            json={
                "tools": [python],
                "output_schemas": {"python": python_out},
                "modes": {"python": "live"},
                "tool_calls": [
                    tool_call("python", orjson.dumps({"code": code, "stdin": None}).decode())
                ],
            },
        )
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 15
        assert check(orjson.loads(r.json()["messages"][0]["content"]))
        assert (await client.get("/health")).status_code == 200  # the service stays up
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)
