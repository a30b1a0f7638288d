"""Load and faults on loopback: Redis killed under load, then the LLM backend stopped.

Real processes on free ports: ``redis-server`` (AOF, ``appendfsync always``), the vLLM CPU
server on the packaged model (the backend the ToolActor reaches over HTTP), a ToolActor
(``toolsim serve toolactor``, ``TOOLSIM_BACKEND=vllm``) under load, and a second ToolActor
on the same Redis that nothing reads before Redis comes back: it has no toolset in process,
so a 200 from it proves the toolset was read back from Redis. One ``httpx.AsyncClient`` drives
``--concurrency`` workers over a mix of operations (tool calls that hit the cache, calls with
new arguments that miss, toolset registrations and reads, episodes).

    phase A  redis up -> kill -9 -> restarted on the same port and dir -> recovered
             then every toolset registered (201) is read back through the second ToolActor
    phase B  backend up -> SIGSTOP (hung: 503 within the LLM timeout) -> SIGCONT -> recovered
             -> SIGKILL (refused: 503 at once) -> restarted -> recovered

Every request is recorded: phase, stage, operation, status, elapsed, Retry-After, error code,
and ``lost`` (no response: a client timeout or a connection error). The documented statuses
of each operation are read from the ToolActor's ``/openapi.json``. ``ToolMaker``'s
``/v1/chat/completions`` is no stand-in for the backend: it serves the model ``toolmaker``
and answers a toolset whatever ``response_format`` asks for.

    .venv/bin/python bench/load_fault.py [--duration 5] [--concurrency 8] [--report PATH]

``tests/test_load_fault.py`` runs the same scenario, shorter, and asserts ``evaluate``'s checks.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, ROOT, free_port, server

OPS: dict[str, tuple[str, str]] = {  # operation -> (method, path in the OpenAPI document)
    "tool_call_hit": ("post", "/v1/tool_calls"),
    "tool_call_miss": ("post", "/v1/tool_calls"),
    "create_toolset": ("post", "/v1/toolsets"),
    "get_toolset": ("get", "/v1/toolsets/{toolset_id}"),
    "create_episode": ("post", "/v1/episodes"),
}
MIX: tuple[str, ...] = ("tool_call_hit", "tool_call_miss", "get_toolset", "tool_call_hit")
MIX += ("create_episode", "tool_call_hit", "tool_call_miss", "create_toolset")
"""What each worker sends, in turn (workers start at different places)."""
MARGIN_S = 2.0
"""Slack on the 503 deadlines: one loaded 2-core machine runs every process here."""
QUICK_503_S = 3.0
"""A refused backend answers 503 after the backend's connect retries (0.2 + 0.4 s backoff)."""
STOPPED, KILLED, RESTARTING = "backend stopped", "backend killed", "backend restarting"
RECOVERED = ("recovered (SIGCONT)", "recovered (restart)")


class SetupError(RuntimeError):
    """Something the scenario needs is missing; the message says how to get it."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arg: str
    value: str
    """The argument of the calls that hit the cache."""
    returns: str
    """Output fields besides the argument, ``name:type`` each (``price:number``)."""

    def definition(self, variant: int | None = None) -> dict[str, Any]:
        text = self.description + (f" (variant {variant})" if variant is not None else "")
        parameters = {
            "type": "object",
            "properties": {self.arg: {"type": "string"}},
            "required": [self.arg],
            "additionalProperties": False,
        }
        function = {"name": self.name, "description": text, "parameters": parameters}
        return {"type": "function", "function": function}

    def output_schema(self) -> dict[str, Any]:
        fields = dict(f.split(":") for f in f"{self.arg}:string {self.returns}".split())
        props = {
            k: {"type": t} | ({"maxLength": 40} if t == "string" else {}) for k, t in fields.items()
        }
        return {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }


TOOLS = (
    Tool("get_weather", "Current weather in a city.", "city", "Paris", "temperature_c:number"),
    Tool("stock_quote", "Latest price of a listed stock.", "ticker", "ACME", "price:number"),
    Tool("flight_status", "Status of a flight today.", "flight", "LH 400", "status:string"),
    Tool(
        "exchange_rate", "Exchange rate of a currency to euros.", "currency", "USD", "rate:number"
    ),
)


@dataclass
class Record:
    phase: str
    stage: str
    op: str
    sent_s: float
    """When it was sent, seconds since the run started."""
    elapsed_s: float
    status: int | None
    """None: lost (no response at all)."""
    retry_after: str | None = None
    code: str | None = None
    """The error envelope's code, or a tool call's ``observations[0].source``."""
    error: str | None = None
    """Why it was lost (the client's exception)."""

    @property
    def answered_s(self) -> float:
        return self.sent_s + self.elapsed_s


@dataclass
class Phase:
    name: str
    records: list[Record] = field(default_factory=list)
    stages: list[tuple[str, float]] = field(default_factory=list)
    """Each stage and when it began (seconds since the run started)."""
    recovery_s: dict[str, float] = field(default_factory=dict)
    """Seconds from each repair (restart, SIGCONT) until requests succeed again."""


@dataclass(frozen=True)
class Check:
    key: str
    """Stable, for tests: ``lost``, ``documented``, ``retry_after``, ..."""
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Options:
    duration_s: float = 5.0
    """Seconds of load in each stage."""
    concurrency: int = 8
    llm_timeout_s: float = 8.0
    """TOOLSIM_LLM_TIMEOUT_S: per generation (at 5 s a loaded 2-core machine saw a miss time
    out with no fault injected)."""
    client_timeout_s: float = 40.0
    """A request with no answer by then is lost: longer than a miss may legitimately take
    (3 generation attempts, each up to the LLM timeout)."""


@dataclass
class Result:
    options: Options
    startup_s: float
    """Until the vLLM server answered (every process starts at once)."""
    documented: dict[str, list[int]]
    """Each operation's statuses in the ToolActor's OpenAPI document."""
    toolsets_after_redis_restart: dict[str, int]
    """Every toolset registered (201) before and during phase A: its status afterwards."""
    redis: Phase
    backend: Phase

    @property
    def recovery_s(self) -> dict[str, float]:
        return {**self.redis.recovery_s, **self.backend.recovery_s}


# -- processes ------------------------------------------------------------------------------


class RedisProcess:
    """A real redis-server with an AOF in ``workdir``, killed and restarted by its handle."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server is not on PATH: run `make system-deps`")
        self.port = free_port()
        aof = ["--appendonly", "yes", "--appendfsync", "always", "--bind", "127.0.0.1"]
        self.cmd = [binary, "--port", str(self.port), "--dir", str(workdir), "--save", "", *aof]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():  # answers only once the AOF is loaded
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self.cmd}") from None
                time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class VLLMProcess:
    """The vLLM CPU server (scripts/serve-vllm.sh) in a process group of its own."""

    def __init__(self, log_path: Path) -> None:
        from toolsim.config import CommonSettings

        settings = CommonSettings()
        venv = Path(os.environ.get("TOOLSIM_VLLM_VENV", settings.cache_dir / "vllm-venv"))
        if not (venv / "bin" / "python").exists():
            raise SetupError(f"no vLLM venv at {venv}: run `make vllm`")
        model = settings.resolved_model_dir
        if not (model / "config.json").is_file():
            raise SetupError(f"no model at {model}: run `make model`")
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start without waiting (``wait_ready``). Eager mode and the worker in the engine's
        process start in ~22 s instead of ~40 s on two cores."""
        script, flags = (
            ROOT / "scripts" / "serve-vllm.sh",
            "--enforce-eager --distributed-executor-backend uni",
        )
        cmd = ["bash", str(script), str(self.port), *flags.split()]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the engine core goes with it
                # with VLLM_ENABLE_V1_MULTIPROCESSING=0, `uni` runs the worker in the engine
                # core's process (not a third one): ~8 s less per start on two cores
                env={
                    **os.environ,
                    "VLLM_CPU_KVCACHE_SPACE": "1",
                    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                },
            )

    async def wait_ready(self, client: httpx.AsyncClient, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the vLLM server exited ({self.proc.returncode}):\n{tail}")
            try:
                if (await client.get(self.url + "/health", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server was not healthy within {timeout_s:g} s")
            await asyncio.sleep(0.5)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)  # the group this object started

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()


@contextmanager
def actor(redis_url: str, vllm_url: str, options: Options) -> Iterator[str]:
    port = free_port()
    env = {
        "TOOLSIM_REDIS_URL": redis_url,
        "TOOLSIM_BACKEND": "vllm",
        "TOOLSIM_VLLM_URL": vllm_url + "/v1",
        "TOOLSIM_LLM_TIMEOUT_S": str(options.llm_timeout_s),
        "TOOLSIM_LOG_LEVEL": "warning",
    }
    cmd = [PYTHON, "-m", "toolsim", "serve", "toolactor", "--port", str(port)]
    with server(cmd, port, env=env) as url:
        yield url


# -- load -----------------------------------------------------------------------------------


class Workload:
    """The requests of each operation: hits repeat a warmed call, misses never repeat."""

    def __init__(self, toolsets: list[tuple[str, Tool]]) -> None:
        self.toolsets = toolsets
        self.created: list[str] = []
        """Ids of the toolsets registered under load (201)."""
        self._n = itertools.count()

    def request(self, op: str) -> tuple[str, str, dict[str, Any] | None]:
        n = next(self._n)
        toolset_id, tool = self.toolsets[n % len(self.toolsets)]
        if op == "tool_call_hit":
            return "POST", "/v1/tool_calls", call(toolset_id, tool, tool.value)
        if op == "tool_call_miss":
            return "POST", "/v1/tool_calls", call(toolset_id, tool, f"{tool.value} {n}")
        if op == "create_toolset":
            return "POST", "/v1/toolsets", toolset_body(tool, variant=n)
        if op == "get_toolset":
            return "GET", f"/v1/toolsets/{toolset_id}", None
        return "POST", "/v1/episodes", {"toolset_id": toolset_id, "seed": n}


def call(toolset_id: str, tool: Tool, value: str) -> dict[str, Any]:
    arguments = json.dumps({tool.arg: value})
    function = {"name": tool.name, "arguments": arguments}
    return {
        "toolset_id": toolset_id,
        "tool_calls": [{"id": "c1", "type": "function", "function": function}],
    }


def toolset_body(tool: Tool, variant: int | None = None) -> dict[str, Any]:
    return {
        "tools": [tool.definition(variant)],
        "output_schemas": {tool.name: tool.output_schema()},
        "infer_output_schemas": False,
    }


class Load:
    """Closed-loop workers over ``MIX`` while the phase moves from stage to stage."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        workload: Workload,
        phase: Phase,
        concurrency: int,
        t0: float,
    ) -> None:
        self.client, self.workload, self.phase = client, workload, phase
        self.concurrency, self.t0 = concurrency, t0
        self.stage = ""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._awaited: tuple[str, str] | None = None
        self._answered = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def enter(self, stage: str) -> None:
        if self.stage:
            progress(self.phase, self.stage)
        self.stage = stage
        self.phase.stages.append((stage, self.now()))

    async def send(self, op: str) -> Record:
        method, path, body = self.workload.request(op)
        record = Record(self.phase.name, self.stage, op, self.now(), 0.0, None)
        started = time.perf_counter()
        try:
            response = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:  # no response: a timeout, refused or reset connection
            record.error = repr(exc)[:200]
        else:
            record.status = response.status_code
            record.retry_after = response.headers.get("retry-after")
            record.code = outcome(response)
            if op == "create_toolset" and response.status_code == 201:
                self.workload.created.append(response.json()["id"])
        record.elapsed_s = time.perf_counter() - started
        self.phase.records.append(record)
        if (record.stage, record.op) == self._awaited:
            self._answered.set()
        return record

    async def until_ok(self, op: str, status: int, timeout_s: float = 180) -> float:
        """Send ``op`` until it answers ``status`` (a pause between tries); seconds it took."""
        started = time.monotonic()
        while (await self.send(op)).status != status:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{op} did not answer {status} within {timeout_s:g} s")
            await asyncio.sleep(0.25)
        return time.monotonic() - started

    async def hold(self, seconds: float, op: str) -> None:
        """Stay in this stage ``seconds``, and until one ``op`` sent in it has answered."""
        self._awaited, self._answered = (self.stage, op), asyncio.Event()
        await asyncio.sleep(seconds)
        if not sent_in(self.phase, self.stage, ops=(op,)):
            await self._answered.wait()

    async def _worker(self, offset: int) -> None:
        for op in itertools.islice(itertools.cycle(MIX), offset, None):
            if self._stop.is_set():
                return
            await self.send(op)

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        progress(self.phase, self.stage)


def outcome(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if response.status_code >= 400:
        return str((body.get("error") or {}).get("code"))
    observations = body.get("observations") if isinstance(body, dict) else None
    return str(observations[0]["source"]) if observations else None


def progress(phase: Phase, stage: str) -> None:
    """One line per stage as it ends: what its requests answered so far."""
    rows = sent_in(phase, stage)
    lost = sum(r.status is None for r in rows)
    done = f"{len(rows) - lost} answered so far ({statuses(rows)}), {lost} lost"
    print(f"  {phase.name} | {stage}: {done}", flush=True)


# -- the scenario ---------------------------------------------------------------------------


async def phase_redis(load: Load, redis_server: RedisProcess, options: Options) -> None:
    """Phase A: load, kill -9 Redis, load, restart it on the same port and dir, load."""
    async with load:
        load.enter("redis up")
        await asyncio.sleep(options.duration_s)
        load.enter("redis killed")
        redis_server.kill9()
        await asyncio.sleep(options.duration_s)
        load.enter("redis restarted")
        started = time.monotonic()
        await asyncio.to_thread(redis_server.start)
        await load.until_ok("create_episode", 201)  # the registry writes again
        load.phase.recovery_s["redis restart to 201"] = round(time.monotonic() - started, 2)
        load.enter("recovered")
        await load.hold(options.duration_s, "tool_call_miss")


async def phase_backend(load: Load, backend: VLLMProcess, options: Options) -> None:
    """Phase B: SIGSTOP the backend (hung) then SIGCONT; SIGKILL it (refused) then restart."""
    async with load:
        load.enter("backend up")
        await asyncio.sleep(options.duration_s)
        load.enter(STOPPED)
        backend.signal(signal.SIGSTOP)
        await asyncio.sleep(max(options.duration_s, options.llm_timeout_s + 1))
        load.enter("backend continued")
        backend.signal(signal.SIGCONT)
        seconds = await load.until_ok("tool_call_miss", 200)
        load.phase.recovery_s["SIGCONT to 200"] = round(seconds, 2)
        load.enter("recovered (SIGCONT)")
        await load.hold(options.duration_s, "tool_call_miss")
        load.enter(KILLED)
        backend.kill9()
        await asyncio.sleep(options.duration_s)
        load.enter(RESTARTING)
        started = time.monotonic()
        backend.start()
        await backend.wait_ready(load.client)
        load.phase.recovery_s["backend restart to healthy"] = round(time.monotonic() - started, 2)
        await load.until_ok("tool_call_miss", 200)
        load.phase.recovery_s["backend restart to 200"] = round(time.monotonic() - started, 2)
        load.enter("recovered (restart)")
        await load.hold(options.duration_s, "tool_call_miss")


async def register(client: httpx.AsyncClient, count: int) -> list[tuple[str, Tool]]:
    """``count`` toolsets, and one call of each that later requests find in the cache."""
    toolsets = []
    for i in range(count):
        tool = TOOLS[i % len(TOOLS)]
        body = toolset_body(tool, variant=None if i < len(TOOLS) else i)
        created = await client.post("/v1/toolsets", json=body)
        assert created.status_code == 201, created.text
        toolsets.append((created.json()["id"], tool))
    warmed = await asyncio.gather(*(warm(client, t, tool) for t, tool in toolsets))
    for response in warmed:
        assert response.status_code == 200, response.text
    return toolsets


async def warm(client: httpx.AsyncClient, toolset_id: str, tool: Tool) -> httpx.Response:
    """One call that fills the cache. Not a measured phase: a 503 (all the first misses reach
    the backend at once, and on a loaded machine some outlast the LLM timeout) is tried again;
    a failure is never cached, so the next try generates anew."""
    for _ in range(3):
        response = await client.post("/v1/tool_calls", json=call(toolset_id, tool, tool.value))
        if response.status_code != 503:
            break
    return response


async def read_back(witness: str, ids: list[str]) -> dict[str, int]:
    """Each toolset's status from the ToolActor that never held it: read from Redis."""
    async with httpx.AsyncClient(base_url=witness, timeout=10) as client:
        statuses = {}
        for toolset_id in ids:
            statuses[toolset_id] = (await client.get(f"/v1/toolsets/{toolset_id}")).status_code
        return statuses


def documented(openapi: dict[str, Any]) -> dict[str, list[int]]:
    """Each operation's statuses as the ToolActor's OpenAPI document lists them."""
    out = {}
    for op, (method, path) in OPS.items():
        responses = openapi["paths"][path][method]["responses"]
        out[op] = sorted(int(status) for status in responses if status.isdigit())
    return out


async def scenario(
    actor_url: str,
    witness_url: str,
    backend: VLLMProcess,
    redis_server: RedisProcess,
    options: Options,
    t0: float,
) -> Result:
    limits = httpx.Limits(max_connections=options.concurrency + 4)
    async with httpx.AsyncClient(
        base_url=actor_url, timeout=options.client_timeout_s, limits=limits
    ) as client:
        await backend.wait_ready(client)
        started_s = time.monotonic() - t0
        print(f"processes up after {started_s:.1f} s", flush=True)
        doc = documented((await client.get("/openapi.json")).json())
        workload = Workload(await register(client, 2 * len(TOOLS)))
        redis_phase, backend_phase = Phase("A redis"), Phase("B backend")
        await phase_redis(
            Load(client, workload, redis_phase, options.concurrency, t0), redis_server, options
        )
        ids = [t for t, _ in workload.toolsets] + workload.created
        kept = await read_back(witness_url, ids)
        await phase_backend(
            Load(client, workload, backend_phase, options.concurrency, t0), backend, options
        )
    return Result(options, round(started_s, 1), doc, kept, redis_phase, backend_phase)


def run(options: Options, workdir: Path) -> Result:
    """Start every process, run both phases, stop everything; the raw results."""
    t0 = time.monotonic()
    (workdir / "redis").mkdir(exist_ok=True)
    redis_server = RedisProcess(workdir / "redis")
    backend = VLLMProcess(workdir / "vllm.log")
    with ExitStack() as stack:
        redis_server.start()
        stack.callback(redis_server.stop)
        backend.start()  # ~22 s: the ToolActors start meanwhile
        stack.callback(backend.stop)
        actor_url = stack.enter_context(actor(redis_server.url, backend.url, options))
        witness_url = stack.enter_context(actor(redis_server.url, backend.url, options))
        return asyncio.run(scenario(actor_url, witness_url, backend, redis_server, options, t0))


# -- what the results say ---------------------------------------------------------------------


def undocumented(result: Result, phase: Phase) -> Counter[tuple[str, int]]:
    return Counter(
        (r.op, r.status)
        for r in phase.records
        if r.status is not None and r.status not in result.documented[r.op]
    )


def start_of(phase: Phase, stage: str) -> float:
    return dict(phase.stages)[stage]


def end_of(phase: Phase, stage: str) -> float:
    later = [t for s, t in phase.stages if t > start_of(phase, stage)]
    return min(later, default=float("inf"))


def sent_in(phase: Phase, *stages: str, ops: tuple[str, ...] = tuple(OPS)) -> list[Record]:
    return [r for r in phase.records if r.stage in stages and r.op in ops]


def clean(phase: Phase, stage: str, ops: tuple[str, ...] = tuple(OPS)) -> list[Record]:
    """Sent in ``stage`` and answered before the next one began (a fault started there)."""
    return [r for r in sent_in(phase, stage, ops=ops) if r.answered_s <= end_of(phase, stage)]


def outages(phase: Phase) -> list[tuple[float, float]]:
    """From each fault until its recovery stage began."""
    pairs = [("redis killed", "recovered"), (STOPPED, "recovered (SIGCONT)")]
    pairs.append((KILLED, "recovered (restart)"))
    stages = dict(phase.stages)
    return [(stages[a], stages[b]) for a, b in pairs if a in stages and b in stages]


def during_outage(phase: Phase, record: Record) -> bool:
    return any(record.sent_s < b and record.answered_s > a for a, b in outages(phase))


def fault_wait(phase: Phase, record: Record) -> float:
    """Seconds a response took from when it was sent, or from the fault if that came later."""
    faults = [t for s, t in phase.stages if s in (STOPPED, KILLED) and t <= record.answered_s]
    return record.answered_s - max([record.sent_s, *faults[-1:]])


def evaluate(result: Result) -> list[Check]:
    """Every property the issue asks for, each with its evidence."""
    return [*_overall(result), *_redis(result), *_backend(result)]


def _overall(result: Result) -> list[Check]:
    every = result.redis.records + result.backend.records
    lost = [asdict(r) for r in every if r.status is None]
    outside = undocumented(result, result.redis) + undocumented(result, result.backend)
    bare = [r for r in every if r.status == 503 and not r.retry_after]
    return [
        Check("lost", "no request lost", not lost, f"{len(lost)} of {len(every)} lost {lost[:3]}"),
        Check("documented", "only documented statuses", not outside, f"outside: {dict(outside)}"),
        Check("retry_after", "every 503 carries Retry-After", not bare, f"{len(bare)} without"),
    ]


def _redis(result: Result) -> list[Check]:
    phase = result.redis
    kept = result.toolsets_after_redis_restart
    missing = {t: s for t, s in kept.items() if s != 200}
    calls = sent_in(phase, "redis killed", ops=("tool_call_hit", "tool_call_miss"))
    failed = [r for r in phase.records if r.status is not None and r.status >= 500]
    unexpected = [
        (r.op, r.status, r.code)
        for r in failed
        if not during_outage(phase, r)
        or r.code != "store_unavailable"
        or r.op not in ("create_toolset", "create_episode")
    ]
    back = clean(phase, "recovered")
    return [
        Check(
            "toolsets_kept",
            "every toolset kept by Redis (read back by a fresh ToolActor)",
            bool(kept) and not missing,
            f"{len(kept) - len(missing)}/{len(kept)} read back; missing {missing}",
        ),
        Check(
            "calls_while_redis_down",
            "tool calls answer 200 while Redis is down",
            bool(calls) and all(r.status == 200 for r in calls),
            statuses(calls),
        ),
        Check(
            "redis_5xx",
            "Redis down: 5xx only on registry writes, 503 store_unavailable",
            not unexpected,
            f"{len(failed)} 5xx; unexpected {unexpected[:5]}",
        ),
        Check(
            "redis_recovered",
            "all 2xx once Redis is back",
            bool(back) and all(r.status is not None and r.status < 300 for r in back),
            statuses(back),
        ),
    ]


def _backend(result: Result) -> list[Check]:
    phase, timeout_s = result.backend, result.options.llm_timeout_s
    b503 = [r for r in phase.records if r.status == 503]
    answered = {
        name: sum(start_of(phase, a) <= r.answered_s < start_of(phase, b) for r in b503)
        for name, a, b in (("hung", STOPPED, "backend continued"), ("refused", KILLED, RESTARTING))
    }
    bound = timeout_s + MARGIN_S
    late = [(r.op, r.stage, round(fault_wait(phase, r), 2)) for r in b503]
    late = [x for x in late if x[2] > bound]
    refused = [r for r in b503 if r.stage == KILLED]
    slow = [round(r.elapsed_s, 2) for r in refused if r.elapsed_s > QUICK_503_S]
    stray = [(r.op, r.stage, round(r.sent_s, 1)) for r in b503 if not during_outage(phase, r)]
    hits = sent_in(phase, STOPPED, KILLED, RESTARTING, ops=("tool_call_hit",))
    slowest_hit = max((r.elapsed_s for r in hits), default=0.0)
    back = {s: clean(phase, s, ("tool_call_miss",)) for s in RECOVERED}
    return [
        Check(
            "outage_503",
            "each backend outage answered 503",
            all(answered.values()),
            f"503s: {answered}",
        ),
        Check(
            "bound_503",
            f"backend 503s within the LLM timeout + {MARGIN_S:g} s ({bound:g} s)",
            bool(b503) and not late,
            f"{len(b503)} 503s, slowest {max((fault_wait(phase, r) for r in b503), default=0):.2f}"
            f" s after the fault or the send; late {late[:5]}",
        ),
        Check(
            "refused_quick",
            f"refused backend: 503 within {QUICK_503_S:g} s",
            bool(refused) and not slow,
            f"{len(refused)} 503s, slowest {max((r.elapsed_s for r in refused), default=0):.2f} s",
        ),
        Check("stray_503", "no backend 503 outside the outages", not stray, f"stray {stray[:5]}"),
        Check(
            "hits_during_outage",
            "cache hits answer 200 during the outages, without waiting on the backend",
            bool(hits) and all(r.status == 200 for r in hits) and slowest_hit < timeout_s,
            f"{statuses(hits)}; slowest {slowest_hit:.3f} s",
        ),
        Check(
            "backend_recovered",
            "misses answer 200 again after SIGCONT and after the restart",
            all(v and all(r.status == 200 for r in v) for v in back.values()),
            "; ".join(f"{s}: {statuses(v) or 'none'}" for s, v in back.items())
            + f"; recovery {result.recovery_s}",
        ),
    ]


def statuses(records: list[Record]) -> str:
    counts = Counter(r.status for r in records)
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items(), key=lambda kv: kv[0] or 0))


def table(result: Result, phase: Phase) -> list[str]:
    lines = [
        f"phase {phase.name}",
        f"{'stage':<22}{'sent':>6}{'answered':>10}{'lost':>6}{'max ms':>9}  statuses",
    ]
    stages = [stage for stage, _ in phase.stages]
    for stage in [*stages, "total"]:
        rows = phase.records if stage == "total" else sent_in(phase, stage)
        answered = sum(r.status is not None for r in rows)
        top = max((r.elapsed_s for r in rows), default=0.0) * 1000
        lines.append(
            f"{stage:<22}{len(rows):>6}{answered:>10}{len(rows) - answered:>6}"
            f"{top:>9.0f}  {statuses(rows)}"
        )
    outside = undocumented(result, phase)
    lines.append(
        "outside the documented set: "
        + (", ".join(f"{op} {status} x{n}" for (op, status), n in outside.items()) or "none")
    )
    return lines


def report_json(result: Result, checks: list[Check]) -> dict[str, Any]:
    return {
        **asdict(result),
        "recovery_s": result.recovery_s,
        "checks": [asdict(c) for c in checks],
    }


def headline(result: Result, checks: list[Check]) -> str:
    every = result.redis.records + result.backend.records
    lost = sum(r.status is None for r in every)
    outside = sum(undocumented(result, p).total() for p in (result.redis, result.backend))
    kept = result.toolsets_after_redis_restart
    return (
        f"HEADLINE load+faults: {len(every)} requests, {lost} lost, {outside} outside the "
        f"documented statuses, {sum(s == 200 for s in kept.values())}/{len(kept)} toolsets kept "
        f"across kill -9, {sum(c.ok for c in checks)}/{len(checks)} checks pass"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per stage")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--llm-timeout", type=float, default=8.0, help="TOOLSIM_LLM_TIMEOUT_S")
    parser.add_argument("--report", type=Path, default=ROOT / "bench/results/load_fault.json")
    args = parser.parse_args()
    options = Options(args.duration, args.concurrency, args.llm_timeout)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            result = run(options, Path(workdir))
        except SetupError as exc:
            raise SystemExit(str(exc)) from None
    checks = evaluate(result)
    for phase in (result.redis, result.backend):
        print("\n".join(["", *table(result, phase)]))
    print(f"\nrecovery (s): {result.recovery_s}")
    for check in checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report_json(result, checks), indent=1) + "\n")
    print(f"report: {args.report}")
    print(headline(result, checks))


if __name__ == "__main__":
    main()
