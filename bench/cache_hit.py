"""Cache-hit path of the ToolActor vs a bare FastAPI endpoint and a raw ASGI app.

All three are served the same way (uvicorn, uvloop, httptools, no access log, one process)
and loaded with wrk at 1, 8 and 32 connections in one run. The ToolActor runs on its real
embedded backend; one call warms the cache, then every request is a hit.

    .venv/bin/python bench/cache_hit.py [--duration 5] [--redis]

Targets: >= 1.0x the FastAPI peer, >= 0.3x the raw ASGI ceiling, p99 < 10 ms at 32 connections.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
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


def measure(url: str, duration: int) -> dict[int, WrkResult]:
    body = json.dumps(BODY).encode()
    wrk(url, body, 8, 1)  # warm-up
    return {c: wrk(url, body, c, duration) for c in CONNECTIONS}


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
    for name, kind in (("raw ASGI", "asgi"), ("bare FastAPI", "fastapi")):
        port = free_port()
        with server([PYTHON, "bench/peers.py", kind, str(port)], port, ready_path="/") as url:
            results[name] = measure(url + "/v1/tool_calls", args.duration)

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
            first = httpx.post(url + "/v1/tool_calls", json=BODY, timeout=300).json()
            assert first["observations"][0]["source"] == "simulated", first
            results["ToolActor (hit)"] = measure(url + "/v1/tool_calls", args.duration)
            sources = httpx.get(url + "/metrics").text
            assert "toolsim_cache_hits_total" in sources
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
    actor, fastapi, asgi = (results[k] for k in ("ToolActor (hit)", "bare FastAPI", "raw ASGI"))
    for c in CONNECTIONS:
        print(
            f"c={c:<3} actor/fastapi {actor[c].rps / fastapi[c].rps:.2f}x   "
            f"actor/asgi {actor[c].rps / asgi[c].rps:.2f}x"
        )
    plot(results, Path(__file__).resolve().parent / "results" / "cache_hit.png")
    a32, f32, r32 = actor[32], fastapi[32], asgi[32]
    cache = "redis" if args.redis else "memory"
    print(
        f"HEADLINE cache-hit ({cache}) at 32 connections: {a32.rps:.0f} obs/s = "
        f"{a32.rps / f32.rps:.2f}x FastAPI, {a32.rps / r32.rps:.2f}x raw ASGI, "
        f"p99 {a32.p99_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
