"""The whole stack under ``docker compose``, built and driven from the host as a user would.

What runs (marker ``compose``): scripts/compose-engine.sh sets up a Docker-API engine where none
runs (rootful podman, its healthcheck loop, stand-in base images), scripts/wheelhouse.sh
prepares the wheels on the host, and docker-compose.yml's images are built from them alone (no
package index) and brought up as they ship: the one-shot model fetch (on the host's model
cache, bind-mounted, so the conversion is not repeated), vLLM CPU, Redis with AOF, the
ToolActor and the ToolMaker, gated on their healthchecks. Then, over the published ports: a
ToolMaker toolset generated through vLLM, read back through the ToolActor (one registry), a
simulated call of its tool through the ToolActor, the same call replayed from the Redis cache,
and Redis killed and started again with the toolset and the cached observation still there.
``docker compose down -v`` ends it; the engine is stopped if this module started it. The
``train`` profile is checked as configuration only (its image is the heaviest, and the demo
itself is ``make demo``'s business).

Figures (build times, up-to-healthy, first call and replay latencies) are printed at the end
(``pytest -s``) and written to bench/results/compose.json.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from toolsim.config import CommonSettings
from toolsim.model import is_fetched, model_dir
from toolsim_trainer.pipeline import PipelineConfig

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "toolsim-test"  # not `toolsim`: a user's own stack on this machine stays untouched
BUILD_ORDER = ("toolactor", "toolmaker", "vllm", "model")  # one at a time: shared layers first
WHEELHOUSE_IMAGE = "toolsim/wheelhouse:local"
ENGINE_TIMEOUT_S = 600
BUILD_TIMEOUT_S = 900
UP_TIMEOUT_S = 420
FIGURES: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


class Compose:
    """``docker compose -p toolsim-test -f docker-compose.yml -f <override>`` with the engine's env."""

    def __init__(self, env: dict[str, str], override: Path) -> None:
        self.env = env
        self.base = [env["TOOLSIM_COMPOSE"], "-p", PROJECT, "-f", "docker-compose.yml"]
        self.base += ["-f", str(override)]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], self.env, timeout)


@pytest.fixture(scope="module")
def engine() -> Iterator[dict[str, str]]:
    started = time.perf_counter()
    done = run(["bash", "scripts/compose-engine.sh", "start"], dict(os.environ), ENGINE_TIMEOUT_S)
    env = dict(os.environ)
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    FIGURES["engine_setup_s"] = round(time.perf_counter() - started, 1)
    yield env
    if env.get("TOOLSIM_ENGINE_STARTED") == "1":
        run(["bash", "scripts/compose-engine.sh", "stop"], dict(os.environ), 60)


@pytest.fixture(scope="module")
def stack(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cache = CommonSettings().cache_dir
    assert is_fetched(model_dir(cache)), f"no packaged model under {cache}: run make model"
    ports = {"toolactor": free_port(), "toolmaker": free_port()}
    override = tmp_path_factory.mktemp("compose") / "override.yml"
    override.write_text(
        "services:\n"
        + "".join(
            f"  {name}:\n    ports: !override ['127.0.0.1:{port}:{8001 if name == 'toolactor' else 8002}']\n"
            for name, port in ports.items()
        )
    )
    env = {
        **engine,
        "TOOLSIM_ENGINE_CLI": engine["TOOLSIM_ENGINE_CLI"],
        "TOOLSIM_WHEELHOUSE_IMAGE": WHEELHOUSE_IMAGE,
        "TOOLSIM_MODEL_CACHE": str(cache),
    }
    compose = Compose(env, override)
    started = time.perf_counter()
    run(["bash", "scripts/wheelhouse.sh", "--image"], env, BUILD_TIMEOUT_S)
    FIGURES["wheelhouse_s"] = round(time.perf_counter() - started, 1)
    for service in BUILD_ORDER:
        started = time.perf_counter()
        compose("build", service, timeout=BUILD_TIMEOUT_S)
        FIGURES[f"build_{service}_s"] = round(time.perf_counter() - started, 1)
    try:
        started = time.perf_counter()
        compose(
            "up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 60
        )
        FIGURES["up_to_healthy_s"] = round(time.perf_counter() - started, 1)
        yield compose, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    except BaseException:
        logs = subprocess.run(
            [*compose.base, "logs", "--tail", "40"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print(logs.stdout[-6000:], logs.stderr[-2000:], file=sys.stderr)
        raise
    finally:
        compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180)
        left = run(
            [
                engine["TOOLSIM_ENGINE_CLI"],
                "ps",
                "-aq",
                "--filter",
                f"label=com.docker.compose.project={PROJECT}",
            ],
            env,
            60,
        )
        assert left.stdout.strip() == "", f"containers left behind: {left.stdout}"
        report()


def report() -> None:
    out = ROOT / "bench" / "results" / "compose.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(FIGURES, indent=2) + "\n")
    print("\ncompose figures:", json.dumps(FIGURES), file=sys.stderr)


def test_train_profile_resolves_against_the_services_by_name(
    engine: dict[str, str], tmp_path: Path
) -> None:
    override = tmp_path / "empty.yml"
    override.write_text("services: {}\n")
    config = json.loads(
        Compose(engine, override)("--profile", "train", "config", "--format", "json").stdout
    )
    trainer = config["services"]["trainer"]
    assert trainer["image"] == "toolsim/trainer:0.1.0" and trainer["build"]["target"] == "trainer"
    assert {name: dep["condition"] for name, dep in trainer["depends_on"].items()} == {
        "toolactor": "service_healthy",
        "toolmaker": "service_healthy",
    }
    assert any(v["target"] == "/app/runs" and v["type"] == "volume" for v in trainer["volumes"])
    command = trainer["command"]
    assert command[:2] == ["toolsim", "pipeline"]
    config_path = next(a.split("=", 1)[1] for a in command if a.startswith("--config="))
    sets = [a.split("=", 1)[1] for a in command if a.startswith("--set=")]
    assert "toolactor_url=http://toolactor:8001" in sets
    # the command's config builds the real pipeline config (paths as the container sees them)
    cwd = Path.cwd()
    try:
        os.chdir(ROOT)
        pipeline = PipelineConfig.from_yaml(ROOT / config_path, sets)
    finally:
        os.chdir(cwd)
    assert pipeline.toolactor_url == "http://toolactor:8001"
    assert "train" not in config["services"]["toolactor"].get("profiles", [])


def test_toolset_call_replay_and_redis_restart_through_the_stack(stack: Any) -> None:
    compose, url = stack
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        made = client.post(
            f"{url['toolmaker']}/v1/toolsets",
            json={
                "task": "Look up the current weather in a city",
                "max_tools": 1,
                "utility_tools": [],
                "seed": 0,
            },
        )
        assert made.status_code == 201, made.text
        FIGURES["toolmaker_generated_toolset_s"] = round(time.perf_counter() - started, 2)
        toolset = made.json()
        # one registry: the ToolActor reads what the ToolMaker stored
        shared = client.get(f"{url['toolactor']}/v1/toolsets/{toolset['id']}")
        assert shared.status_code == 200, shared.text
        tool = toolset["tools"][0]["function"]
        arguments = {k: example_value(v) for k, v in tool["parameters"]["properties"].items()}
        call = {
            "toolset_id": toolset["id"],
            "seed": 7,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": tool["name"], "arguments": json.dumps(arguments)},
                }
            ],
        }
        first, first_s = timed_post(client, f"{url['toolactor']}/v1/tool_calls", call)
        assert first["observations"][0]["source"] == "simulated", first
        replay, replay_s = timed_post(client, f"{url['toolactor']}/v1/tool_calls", call)
        assert replay["observations"][0]["source"] == "cache", replay
        assert replay["messages"] == first["messages"]
        FIGURES["first_call_ms"] = round(first_s * 1000, 1)
        FIGURES["replay_ms"] = round(replay_s * 1000, 1)

        # appendfsync everysec (Redis's default) may lose the last second or two of writes to a
        # SIGKILL (longer when a slow fsync postpones the write); what the test checks is that
        # what Redis has persisted is served after the restart, so persist it first
        persist_aof(compose)
        assert cached_keys(compose) >= 1, "the observation never reached Redis"
        started = time.perf_counter()
        compose("kill", "redis")
        compose("up", "-d", "--wait", "--wait-timeout", "120", "redis", timeout=180)
        FIGURES["redis_restart_s"] = round(time.perf_counter() - started, 1)
        # the ToolActor may answer the replay below from its near-cache: what Redis kept
        # across the SIGKILL is checked in Redis itself
        assert cached_keys(compose) >= 1, "the observation did not survive the Redis restart"
        kept = client.get(f"{url['toolactor']}/v1/toolsets/{toolset['id']}")
        assert kept.status_code == 200 and kept.json()["tools"] == toolset["tools"], kept.text
        again = retry_post(client, f"{url['toolactor']}/v1/tool_calls", call)
        assert (
            again["observations"][0]["source"] == "cache" and again["messages"] == first["messages"]
        ), (
            f"replay after the restart: {again['observations'][0]}; observation keys in Redis: "
            f"{cached_keys(compose)}; ToolActor cache errors: "
            f"{metric(client, url['toolactor'], 'toolsim_cache_errors_total')}"
        )


def persist_aof(compose: Any) -> None:
    """Rewrite the AOF (a fork dumps the whole dataset) and wait until the rewrite is done."""
    compose("exec", "-T", "redis", "redis-cli", "BGREWRITEAOF")
    deadline = time.monotonic() + 60
    while True:
        info = compose("exec", "-T", "redis", "redis-cli", "INFO", "persistence").stdout
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        done = fields.get("aof_rewrite_in_progress") == "0"
        if done and fields.get("aof_rewrite_scheduled") == "0":
            assert fields.get("aof_last_bgrewrite_status") == "ok", info
            return
        assert time.monotonic() < deadline, f"the AOF rewrite did not finish:\n{info}"
        time.sleep(0.2)


def cached_keys(compose: Any) -> int:
    listed = compose("exec", "-T", "redis", "redis-cli", "--scan", "--pattern", "toolsim:obs:*")
    return len(listed.stdout.split())


def metric(client: httpx.Client, url: str, name: str) -> str:
    lines = client.get(f"{url}/metrics").text.splitlines()
    return "; ".join(line for line in lines if line.startswith(name)) or "absent"


def example_value(schema: dict[str, Any]) -> Any:
    """An argument the tool's parameter schema accepts (generated tools are in strict form)."""
    kinds = schema.get("type", "string")
    kind = next((k for k in kinds if k != "null"), "null") if isinstance(kinds, list) else kinds
    if "enum" in schema:
        return schema["enum"][0]
    return {
        "string": "Paris",
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "null": None,
        "array": [],
        "object": {},
    }[kind]


def timed_post(
    client: httpx.Client, url: str, body: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    answer = client.post(url, json=body)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return answer.json(), elapsed


def retry_post(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The ToolActor's Redis pool reconnects on its own; give it a few seconds after a restart."""
    deadline = time.monotonic() + 30
    while True:
        answer = client.post(url, json=body)
        if answer.status_code == 200 or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            return result
        time.sleep(1)
