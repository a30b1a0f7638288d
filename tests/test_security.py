"""The services tried as an attacker would: one test per hole of issue 8 (untrusted input,
access control). Every outbound connection a test could provoke goes to a listener the test
itself holds on 127.0.0.1, which counts what reaches it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
from fastapi import FastAPI, Request
from starlette.responses import Response

from tests.conftest import (
    WEATHER_TOOL,
    RedisServer,
    ThreadedServer,
    start_app,
    tool_call,
)
from tests.doubles import ScriptedBackend
from tests.test_trainer_k8s import LAYOUTS, pod_template, render
from toolsim.errors import InvalidToolDefinitionError
from toolsim.registry import MemoryRegistry
from toolsim.tools import PythonSandbox, ToolConfigurationError, utility_definitions
from toolsim_toolactor import ActorSettings, create_app
from toolsim_toolmaker import MakerSettings
from toolsim_toolmaker import create_app as create_maker
from toolsim_toolmaker.openapi_import import import_openapi

CALC, CALC_OUT = utility_definitions(["calculator"])["calculator"]
PYTHON, PYTHON_OUT = utility_definitions(["python"])["python"]


class Listener:
    """A TCP server on a free loopback port that counts connections and answers ``{}``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: 2\r\nconnection: close\r\n\r\n{}"
                    )
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def actor() -> AsyncIterator[httpx.AsyncClient]:
    _, client, life = await start_app(ScriptedBackend())
    try:
        yield client
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


async def maker(**settings: Any) -> tuple[httpx.AsyncClient, Any]:
    app = create_maker(MakerSettings(**settings), backend=ScriptedBackend())
    life = app.router.lifespan_context(app)
    await life.__aenter__()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://maker"), life


def tool_with(parameters: dict[str, Any], name: str = "lookup") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def assert_refused(r: httpx.Response, code: str = "invalid_tool_definition") -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code, r.text


# --- untrusted input: schemas never fetch --------------------------------------------------------


async def test_remote_refs_are_refused_and_nothing_is_fetched(
    actor: httpx.AsyncClient, listener: Listener
) -> None:
    remote = f"{listener.url}/x.json"
    schemas = [
        {"type": "object", "properties": {"x": {"$ref": remote}}},
        {"type": "object", "properties": {"x": {"$dynamicRef": remote}}},
        {"type": "object", "$id": remote, "properties": {"x": {"$ref": "y.json"}}},
        {"$schema": remote, "type": "object"},
    ]
    for parameters in schemas:
        tool = tool_with(parameters)
        assert_refused(await actor.post("/v1/toolsets", json={"tools": [tool]}))
        inline = {"tools": [tool], "tool_calls": [tool_call("lookup", '{"x": 1}')]}
        assert_refused(await actor.post("/v1/tool_calls", json=inline))
    output = {"type": "object", "properties": {"r": {"$ref": remote}}}
    body = {"tools": [WEATHER_TOOL], "output_schemas": {"get_weather": output}}
    assert_refused(await actor.post("/v1/toolsets", json=body))
    # the ToolMaker's faces: hand-written tools, and an imported OpenAPI document
    client, life = await maker()
    try:
        assert_refused(await client.post("/v1/toolsets", json={"tools": [tool_with(schemas[0])]}))
        document = {
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "jsonSchemaDialect": f"{listener.url}/dialect",
            "paths": {
                "/a": {
                    "get": {
                        "operationId": "a",
                        "responses": {
                            "200": {
                                "description": "ok",
                                "content": {
                                    "application/json": {
                                        "schema": {"$id": remote, "$ref": "#/$defs/z"}
                                    }
                                },
                            }
                        },
                    }
                }
            },
        }
        assert_refused(await client.post("/v1/toolsets/import", json=document))
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)
    # and a validator built from any schema resolves nothing remote, whatever reaches it
    from referencing.exceptions import Unresolvable

    from toolsim.schemas import validator

    with pytest.raises(Unresolvable):
        validator({"$ref": remote}).is_valid(1)
    assert listener.connections == 0


async def test_schema_depth_size_and_ref_cycles_are_bounded(actor: httpx.AsyncClient) -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(50):  # 100 JSON levels: the body parser takes it, the schema check must not
        deep = {"type": "object", "properties": {"a": deep}}
    started = time.perf_counter()
    assert_refused(await actor.post("/v1/toolsets", json={"tools": [tool_with(deep)]}))
    assert time.perf_counter() - started < 2
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
    assert_refused(await actor.post("/v1/toolsets", json={"tools": [tool_with(wide)]}))
    cycle = {
        "type": "object",
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
        "properties": {"x": {"$ref": "#/$defs/a"}},
    }
    dangling = {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}
    for parameters in (cycle, dangling):
        tool = tool_with(parameters)
        assert_refused(await actor.post("/v1/toolsets", json={"tools": [tool]}))
        inline = {"tools": [tool], "tool_calls": [tool_call("lookup", '{"x": 1}')]}
        assert_refused(await actor.post("/v1/tool_calls", json=inline))
    # a recursive schema that consumes the instance as it recurses stays legal
    tree = {
        "type": "object",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            }
        },
        "properties": {"root": {"$ref": "#/$defs/node"}},
    }
    call = tool_call("lookup", orjson.dumps({"root": {"kids": [{"kids": []}]}}).decode())
    r = await actor.post("/v1/tool_calls", json={"tools": [tool_with(tree)], "tool_calls": [call]})
    assert r.status_code == 200, r.text


async def test_catastrophic_pattern_cannot_stall_the_server(actor: httpx.AsyncClient) -> None:
    evil = "^(a+)+$"
    by_value = {"type": "object", "properties": {"s": {"type": "string", "pattern": evil}}}
    by_key = {"type": "object", "patternProperties": {evil: {}}, "additionalProperties": False}
    for parameters, arguments in ((by_value, {"s": "a" * 27 + "!"}), (by_key, {"a" * 27 + "!": 1})):
        body = {
            "tools": [tool_with(parameters)],
            "tool_calls": [tool_call("lookup", orjson.dumps(arguments).decode())],
        }
        started = time.perf_counter()
        call = asyncio.create_task(actor.post("/v1/tool_calls", json=body))
        await asyncio.sleep(0)  # the call starts first, as it would on a busy server
        health = await actor.get("/health")
        health_s = time.perf_counter() - started
        answer = await call
        call_s = time.perf_counter() - started
        assert health.status_code == 200
        assert_refused(answer, "invalid_arguments")
        assert call_s < 1.0 and health_s < 1.0, (call_s, health_s)
    # a pattern a linear-time engine cannot run is refused when the tool is defined
    backref = {"type": "object", "properties": {"s": {"type": "string", "pattern": "(a)\\1"}}}
    r = await actor.post("/v1/toolsets", json={"tools": [tool_with(backref)]})
    assert_refused(r)
    assert r.json()["error"]["param"].startswith("tools[0].function.parameters")


# --- untrusted input: live mode is the operator's ------------------------------------------------


async def test_live_mode_is_off_unless_the_operator_enables_it(
    actor: httpx.AsyncClient, listener: Listener
) -> None:
    calc = {"tools": [CALC], "output_schemas": {"calculator": CALC_OUT}}
    expression = tool_call("calculator", '{"expression": "6*7"}')
    for mode in ("live", "record"):
        r = await actor.post("/v1/toolsets", json={**calc, "modes": {"calculator": mode}})
        assert_refused(r)
        assert r.json()["error"]["param"] == "modes.calculator"
    python = {"tools": [PYTHON], "output_schemas": {"python": PYTHON_OUT}}
    code = tool_call("python", orjson.dumps({"code": "print(1)", "stdin": None}).decode())
    r = await actor.post(
        "/v1/tool_calls", json={**python, "modes": {"python": "live"}, "tool_calls": [code]}
    )
    assert_refused(r)
    endpoint = {
        "tools": [WEATHER_TOOL],
        "modes": {"get_weather": "live"},
        "live_endpoints": {"get_weather": f"{listener.url}/weather"},
    }
    r = await actor.post("/v1/toolsets", json=endpoint)
    assert_refused(r)
    assert r.json()["error"]["param"] == "live_endpoints.get_weather"
    # a toolset stored by a replica that allows live tools is still refused by one that does not
    registry = MemoryRegistry()
    permissive = create_app(
        ActorSettings(live_tools=["calculator"]), backend=ScriptedBackend(), registry=registry
    )
    strict = create_app(ActorSettings(), backend=ScriptedBackend(), registry=registry)
    async with (
        permissive.router.lifespan_context(permissive),
        strict.router.lifespan_context(strict),
        httpx.AsyncClient(transport=httpx.ASGITransport(permissive), base_url="http://a") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(strict), base_url="http://b") as b,
    ):
        stored = await a.post("/v1/toolsets", json={**calc, "modes": {"calculator": "live"}})
        assert stored.status_code == 201, stored.text
        ts = stored.json()["id"]
        ok = await a.post("/v1/tool_calls", json={"toolset_id": ts, "tool_calls": [expression]})
        assert ok.json()["observations"][0]["source"] == "live"
        refused = await b.post(
            "/v1/tool_calls", json={"toolset_id": ts, "tool_calls": [expression]}
        )
        assert_refused(refused)
        rest = await b.post(f"/v1/toolsets/{ts}/tools/calculator", json={"expression": "6*7"})
        assert_refused(rest)
    assert listener.connections == 0


async def test_live_endpoints_need_an_allowed_host_and_a_public_address(
    listener: Listener,
) -> None:
    from toolsim_toolactor.egress import refused_address

    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.100.100.200",  # metadata behind carrier-grade NAT space
        "0.0.0.0",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1",
        "fd00:ec2::254",
    ):
        assert refused_address(ipaddress.ip_address(address), ()), address
    assert not refused_address(ipaddress.ip_address("93.184.215.14"), ())
    assert not refused_address(
        ipaddress.ip_address("127.0.0.1"), (ipaddress.ip_network("127.0.0.0/8"),)
    )
    _, client, life = await start_app(ScriptedBackend(), live_hosts=["localhost"])
    try:
        by_ip = {
            "tools": [WEATHER_TOOL],
            "modes": {"get_weather": "live"},
            "live_endpoints": {"get_weather": f"{listener.url}/weather"},
        }
        assert_refused(await client.post("/v1/toolsets", json=by_ip))  # host not allowed
        by_name = {
            **by_ip,
            "live_endpoints": {"get_weather": f"http://localhost:{listener.port}/weather"},
        }
        r = await client.post("/v1/toolsets", json=by_name)
        assert r.status_code == 201, r.text
        # localhost resolves to loopback, which this server was not told it may call
        call = await client.post(
            f"/v1/toolsets/{r.json()['id']}/tools/get_weather", json={"city": "Oslo"}
        )
        assert call.status_code == 502 and call.json()["error"]["code"] == "live_tool_failed"
        assert "127.0.0.1" not in call.text
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)
    assert listener.connections == 0


async def test_live_responses_are_bounded_unredirected_and_not_echoed() -> None:
    hits: list[str] = []
    api = FastAPI()

    @api.post("/weather")
    async def weather(request: Request) -> Response:
        city = (await request.json())["city"]
        hits.append(city)
        if city == "Moved":
            return Response(status_code=302, headers={"location": "/elsewhere"})
        if city == "Huge":
            return Response(orjson.dumps({"result": "x" * 100_000}), media_type="application/json")
        if city == "Boom":
            return Response("SECRET-UPSTREAM-BODY", status_code=500)
        return Response(orjson.dumps({"result": f"sunny in {city}"}), media_type="application/json")

    @api.post("/elsewhere")
    async def elsewhere() -> Response:
        hits.append("elsewhere")
        return Response(b'{"result": "redirected"}', media_type="application/json")

    settings = {
        "live_hosts": ["127.0.0.1"],
        "live_allowed_networks": ["127.0.0.0/8"],
        "live_max_response_bytes": 4096,
    }
    _, client, life = await start_app(ScriptedBackend(), **settings)
    try:
        with ThreadedServer(api) as server:
            r = await client.post(
                "/v1/toolsets",
                json={
                    "tools": [WEATHER_TOOL],
                    "modes": {"get_weather": "live"},
                    "live_endpoints": {"get_weather": server.url + "/weather"},
                },
            )
            assert r.status_code == 201, r.text
            url = f"/v1/toolsets/{r.json()['id']}/tools/get_weather"
            ok = await client.post(url, json={"city": "Oslo"})
            assert ok.status_code == 200 and ok.json() == {"result": "sunny in Oslo"}
            for city in ("Moved", "Huge", "Boom"):
                bad = await client.post(url, json={"city": city})
                assert bad.status_code == 502 and bad.json()["error"]["code"] == "live_tool_failed"
                assert "SECRET-UPSTREAM-BODY" not in bad.text
        assert "elsewhere" not in hits  # the redirect was not followed
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


# --- untrusted input: the python sandbox ---------------------------------------------------------


@pytest.fixture
def host_secret() -> Iterator[Path]:
    """A secret in a host folder the sandbox has no business seeing (as /run/secrets would be)."""
    folder = Path(tempfile.mkdtemp(prefix="toolsim-secret-", dir="/var/tmp"))
    (folder / "token").write_text("s3cr3t")
    try:
        yield folder
    finally:
        (folder / "token").unlink()
        folder.rmdir()


async def test_python_sandbox_sees_only_what_the_interpreter_needs(host_secret: Path) -> None:
    sandbox = PythonSandbox(timeout_s=5.0)
    probe = (
        "import json, os\n"
        f"paths = ['/etc/hostname', '/etc/passwd', '/run', '/var', {str(host_secret)!r},"
        f" {str(Path(__file__).parent)!r}, '/root/.bashrc', '/home']\n"
        "print(json.dumps({'root': sorted(os.listdir('/')),"
        " 'seen': [p for p in paths if os.path.exists(p)]}))\n"
    )
    observation = await sandbox.call({"code": probe, "stdin": None})
    assert observation["exit_code"] == 0, observation
    seen = orjson.loads(observation["stdout"])
    assert seen["seen"] == []
    system = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "tmp"}
    prefix = Path(sandbox.python).parts[1]  # the interpreter's own prefix (pyenv under /root)
    assert set(seen["root"]) <= system | {prefix}, seen["root"]


async def test_python_sandbox_caps_concurrent_runs_and_total_output() -> None:
    sandbox = PythonSandbox(timeout_s=10.0, output_bytes=1000, max_concurrent=1)
    timed = "import time\nstart = time.time()\ntime.sleep(0.4)\nprint(start, time.time())"
    runs = await asyncio.gather(*(sandbox.call({"code": timed, "stdin": None}) for _ in range(2)))
    spans = sorted(tuple(map(float, run["stdout"].split())) for run in runs)
    assert spans[0][1] <= spans[1][0], spans  # one after the other, never together
    noisy = "import sys\nprint('o' * 100_000)\nprint('e' * 100_000, file=sys.stderr)"
    out = await sandbox.call({"code": noisy, "stdin": None})
    assert out["truncated"] is True
    assert len(out["stdout"]) + len(out["stderr"]) <= 1000
    # what the program writes is bounded as a whole, not only file by file
    fill = (
        "chunk = b'x' * (4 << 20)\n"
        "try:\n"
        "    for i in range(16):\n"
        "        open(f'f{i}', 'wb').write(chunk)\n"
        "    print('wrote 64 MiB')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    sandbox = PythonSandbox(timeout_s=10.0, file_bytes=16 << 20)
    filled = await sandbox.call({"code": fill, "stdin": None})
    assert "refused" in filled["stdout"], filled


async def test_python_tool_without_bubblewrap_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    app = create_app(ActorSettings(live_tools=["python"]), backend=ScriptedBackend())
    with pytest.raises(ToolConfigurationError, match="bwrap"):
        async with app.router.lifespan_context(app):
            pass


def test_k8s_pods_do_not_mount_service_account_tokens() -> None:
    folders = ["k8s", *sorted(set(LAYOUTS.values()))]
    workloads = [
        obj for folder in folders for obj in render(folder) if "template" in obj.get("spec", {})
    ]
    assert workloads
    for workload in workloads:
        spec = pod_template(workload)["spec"]
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]


def test_openapi_import_bounds_the_expanded_document() -> None:
    big = {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(200)}}
    document = {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "components": {"schemas": {"Big": big}},
        "paths": {
            "/a": {
                "post": {
                    "operationId": "a",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        f"p{i}": {"$ref": "#/components/schemas/Big"}
                                        for i in range(400)
                                    },
                                }
                            }
                        }
                    },
                    "responses": {"204": {"description": "done"}},
                }
            }
        },
    }
    started = time.perf_counter()
    with pytest.raises(InvalidToolDefinitionError, match="expands to more than"):
        import_openapi(document)
    assert time.perf_counter() - started < 5


# --- access control ------------------------------------------------------------------------------

KEYS = "sk-alpha-0123456789,sk-beta-9876543210"


async def test_api_keys_guard_every_face_and_health_stays_open() -> None:
    app, client, life = await start_app(ScriptedBackend(), api_keys=KEYS)
    good = {"authorization": "Bearer sk-beta-9876543210"}
    try:
        registered = await client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]}, headers=good)
        assert registered.status_code == 201, registered.text
        ts = registered.json()["id"]
        weather = tool_call("get_weather", '{"city": "Oslo"}')
        mcp = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        faces: list[tuple[str, str, Any]] = [
            ("POST", "/v1/tool_calls", {"toolset_id": ts, "tool_calls": [weather]}),
            ("POST", "/v1/toolsets", {"tools": [WEATHER_TOOL]}),
            ("GET", f"/v1/toolsets/{ts}", None),
            ("POST", f"/v1/toolsets/{ts}/tools/get_weather", {"city": "Oslo"}),
            ("POST", f"/v1/toolsets/{ts}/mcp", mcp),
            ("POST", "/v1/episodes", {"toolset_id": ts}),
            ("GET", "/v1/models", None),
        ]
        mcp_headers = {"accept": "application/json, text/event-stream"}
        for method, path, body in faces:
            for headers in (
                {},
                {"authorization": "Bearer sk-wrong"},
                {"authorization": "sk-alpha-0123456789"},
            ):
                r = await client.request(
                    method, path, json=body, headers={**mcp_headers, **headers}
                )
                assert r.status_code == 401, (path, r.text)
                assert r.json()["error"]["code"] == "invalid_api_key"
                assert r.headers["www-authenticate"].startswith("Bearer")
            r = await client.request(method, path, json=body, headers={**mcp_headers, **good})
            assert r.status_code < 300, (path, r.text)
        assert (await client.get("/health")).status_code == 200
        # the official SDK's api_key is the bearer token, unchanged
        transport = httpx.ASGITransport(app=app)
        for key, works in (("sk-alpha-0123456789", True), ("sk-nope", False)):
            sdk = openai.AsyncOpenAI(
                api_key=key,
                base_url="http://actor/v1",
                http_client=httpx.AsyncClient(transport=transport),
                max_retries=0,
            )
            if works:
                assert [m.id for m in (await sdk.models.list()).data] == ["scripted"]
            else:
                with pytest.raises(openai.AuthenticationError):
                    await sdk.models.list()
            await sdk.close()
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)
    # the ToolMaker too, driven by the SDK
    client, life = await maker(api_keys=KEYS)
    try:
        assert (await client.get("/health")).status_code == 200
        r = await client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        sdk = openai.AsyncOpenAI(
            api_key="sk-alpha-0123456789",
            base_url="http://maker/v1",
            http_client=client,
            max_retries=0,
        )
        assert (await sdk.models.list()).data
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)
    # unset: open, as before
    _, client, life = await start_app(ScriptedBackend())
    try:
        r = await client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
        assert r.status_code == 201
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


async def test_api_keys_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = ActorSettings(api_keys=KEYS, rate_limit_rps=1, rate_limit_burst=1)
    assert "sk-alpha" not in repr(settings) and "sk-alpha" not in str(settings.model_dump())
    _, client, life = await start_app(
        ScriptedBackend(), api_keys=KEYS, rate_limit_rps=1, rate_limit_burst=1
    )
    try:
        statuses = []
        for key in ("sk-alpha-0123456789", "sk-alpha-0123456789", "sk-alpha-wrong"):
            r = await client.get("/v1/models", headers={"authorization": f"Bearer {key}"})
            assert "sk-alpha" not in r.text
            statuses.append(r.status_code)
        assert statuses == [200, 429, 401]  # each path that handles a key was taken
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)
    assert "sk-alpha" not in caplog.text


async def test_rate_limits_answer_429_with_retry_after() -> None:
    _, client, life = await start_app(
        ScriptedBackend(), api_keys=KEYS, rate_limit_rps=0.5, rate_limit_burst=2
    )
    alpha = {"authorization": "Bearer sk-alpha-0123456789"}
    beta = {"authorization": "Bearer sk-beta-9876543210"}
    try:
        statuses = [(await client.get("/v1/models", headers=alpha)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await client.get("/v1/models", headers=alpha)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert (await client.get("/v1/models", headers=beta)).status_code == 200  # its own bucket
        assert (await client.get("/health")).status_code == 200  # never limited
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


@pytest.mark.redis
async def test_rate_limits_are_shared_across_replicas_through_redis(
    redis_server: RedisServer,
) -> None:
    settings = {
        "api_keys": KEYS,
        "rate_limit_rps": 0.2,
        "rate_limit_burst": 3,
        "redis_url": redis_server.url,
    }
    _, first, first_life = await start_app(ScriptedBackend(), **settings)
    _, second, second_life = await start_app(ScriptedBackend(), **settings)
    alpha = {"authorization": "Bearer sk-alpha-0123456789"}
    try:
        statuses = [
            (await replica.get("/v1/models", headers=alpha)).status_code
            for replica in (first, second, first, second)
        ]
        assert statuses == [200, 200, 200, 429]
    finally:
        for client, life in ((first, first_life), (second, second_life)):
            await client.aclose()
            await life.__aexit__(None, None, None)
    keys = [k.decode() for k in redis.Redis(port=redis_server.port).keys("*")]
    assert keys and not any("sk-alpha" in k for k in keys)  # the key itself is never stored
