"""Cache-hit path of the ToolActor vs a bare FastAPI endpoint and a raw ASGI app.

All three are served the same way (uvicorn, uvloop, httptools, no access log, one process)
and loaded with wrk at 1, 8 and 32 connections in one run. The ToolActor runs on its real
embedded backend; two calls warm each face (the second must be a hit), then every request
is a hit.

    .venv/bin/python bench/cache_hit.py [--duration 5] [--redis]

Each face is measured on the same observation: ``POST /v1/tool_calls`` (inline tools), the
REST tool endpoint ``POST /v1/toolsets/{id}/tools/{name}`` and MCP ``tools/call`` on
``/v1/toolsets/{id}/mcp``. Targets: every face >= 1.5x the FastAPI peer with ``--redis``;
``/v1/tool_calls`` >= 0.6x the raw ASGI ceiling on the memory cache; p99 < 5 ms at 32
connections.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, WrkResult, free_port, server, wrk

BODY = {
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ],
    "output_schemas": {
        "get_weather": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "temperature_c": {"type": "number"},
                "conditions": {"type": "string", "maxLength": 80},
            },
            "required": ["city", "temperature_c", "conditions"],
            "additionalProperties": False,
        }
    },
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
CONNECTIONS = (1, 8, 32)


MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@dataclass(frozen=True)
class Face:
    """One way to ask the ToolActor for the same observation."""

    name: str
    path: str
    body: bytes
    headers: dict[str, str] | None = None


def faces(toolset_id: str) -> list[Face]:
    """The same call on every face: inline tools, the REST tool endpoint, MCP tools/call."""
    arguments = BODY["tool_calls"][0]["function"]["arguments"]  # type: ignore[index]
    mcp_call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "get_weather", "arguments": json.loads(arguments)},
    }
    base = f"/v1/toolsets/{toolset_id}"
    return [
        Face("tool_calls", "/v1/tool_calls", json.dumps(BODY).encode()),
        Face("REST", f"{base}/tools/get_weather", arguments.encode()),
        Face("MCP", f"{base}/mcp", json.dumps(mcp_call).encode(), MCP_HEADERS),
    ]


def measure(url: str, duration: int, face: Face) -> dict[int, WrkResult]:
    wrk(url + face.path, face.body, 8, 1, face.headers)  # warm-up
    return {c: wrk(url + face.path, face.body, c, duration, face.headers) for c in CONNECTIONS}


def warm(url: str, face: Face) -> str:
    """One call through ``face`` (it fills the cache); the source it reports."""
    headers = {"Content-Type": "application/json", **(face.headers or {})}
    r = httpx.post(url + face.path, content=face.body, headers=headers, timeout=300)
    r.raise_for_status()
    if face.name == "tool_calls":
        return str(r.json()["observations"][0]["source"])
    if face.name == "REST":
        return r.headers["x-toolsim-source"]
    result = r.json()["result"]
    assert not result.get("isError"), result
    return str((result.get("_meta") or {}).get("toolsim", {}).get("source", "cache"))


def plot(results: dict[str, dict[int, WrkResult]], path: Path) -> None:
    """Throughput and p99 per server and connection count, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(results)
    for i, (name, rows) in enumerate(results.items()):
        xs = [c + (i - (len(results) - 1) / 2) * width for c in range(len(CONNECTIONS))]
        ax_rps.bar(xs, [r.rps for r in rows.values()], width, label=name)
        ax_p99.bar(xs, [r.p99_ms for r in rows.values()], width, label=name)
    for ax, title in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)")):
        ax.set_xticks(range(len(CONNECTIONS)), [f"{c} conn" for c in CONNECTIONS])
        ax.set_title(title)
    ax_rps.legend()
    fig.suptitle("ToolActor cache-hit path vs peers (wrk, one uvicorn process each)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--redis", action="store_true", help="cache in a real redis-server")
    args = parser.parse_args()

    results: dict[str, dict[int, WrkResult]] = {}
    peer = Face("peer", "/v1/tool_calls", json.dumps(BODY).encode())
    for name, kind in (("raw ASGI", "asgi"), ("bare FastAPI", "fastapi")):
        port = free_port()
        with server([PYTHON, "bench/peers.py", kind, str(port)], port, ready_path="/") as url:
            results[name] = measure(url, args.duration, peer)

    env = {"TOOLSIM_LOG_LEVEL": "warning"}
    redis_proc = None
    if args.redis:
        rport = free_port()
        redis_dir = tempfile.mkdtemp()
        redis_proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(rport),
                "--save",
                "",
                "--dir",
                redis_dir,
            ],
            stdout=subprocess.DEVNULL,
        )
        env["TOOLSIM_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
    port = free_port()
    try:
        cmd = [PYTHON, "-m", "toolsim", "serve", "toolactor", "--port", str(port)]
        with server(cmd, port, env=env) as url:
            toolset = {k: BODY[k] for k in ("tools", "output_schemas")}
            created = httpx.post(url + "/v1/toolsets", json=toolset, timeout=300)
            created.raise_for_status()
            for face in faces(created.json()["id"]):
                first = warm(url, face)
                second = warm(url, face)
                assert second == "cache", (face.name, first, second)
                results[f"{face.name} (hit)"] = measure(url, args.duration, face)
            metrics = httpx.get(url + "/metrics").text
            assert "toolsim_cache_hits_total" in metrics
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()

    print(
        f"{'server':<18}"
        + "".join(f"{f'c={c} req/s':>14}{'p50 ms':>9}{'p99 ms':>9}" for c in CONNECTIONS)
    )
    for name, rows in results.items():
        cells = "".join(f"{r.rps:>14.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}" for r in rows.values())
        errors = sum(r.errors for r in rows.values())
        print(f"{name:<18}{cells}" + (f"  errors={errors}" if errors else ""))
    fastapi, asgi = results["bare FastAPI"], results["raw ASGI"]
    actors = {name: rows for name, rows in results.items() if name.endswith("(hit)")}
    for c in CONNECTIONS:
        print(
            f"c={c:<3} "
            + "   ".join(
                f"{name.removesuffix(' (hit)')}: {rows[c].rps / fastapi[c].rps:.2f}x FastAPI, "
                f"{rows[c].rps / asgi[c].rps:.2f}x ASGI"
                for name, rows in actors.items()
            )
        )
    plot(results, Path(__file__).resolve().parent / "results" / "cache_hit.png")
    cache = "redis" if args.redis else "memory"
    headline = "; ".join(
        f"{name.removesuffix(' (hit)')} {rows[32].rps:.0f}/s = "
        f"{rows[32].rps / fastapi[32].rps:.2f}x FastAPI, {rows[32].rps / asgi[32].rps:.2f}x ASGI, "
        f"p99 {rows[32].p99_ms:.2f} ms"
        for name, rows in actors.items()
    )
    print(f"HEADLINE cache-hit ({cache}) at 32 connections: {headline}")


if __name__ == "__main__":
    main()
