"""Redis killed and the LLM backend stopped under load, on loopback with real processes.

The scenario is ``bench/load_fault.py``'s (imported by path: one implementation), shorter:
redis-server with an AOF, the vLLM CPU server on the packaged model, two ToolActors; Redis
killed with SIGKILL and restarted, then the backend hung (SIGSTOP) and continued, then killed
and restarted. Each of ``evaluate``'s checks is one test case. The checks themselves are
tested first on made-up records, so each one is known to fail when its property does not
hold. About 80 s on two cores, most of it the vLLM server starting twice.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_fault", ROOT / "bench" / "load_fault.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


lf = _bench_module()
OPTIONS = lf.Options(duration_s=2.0, concurrency=6, llm_timeout_s=8.0, client_timeout_s=40.0)
TOOL_CALL = [200, 400, 401, 404, 413, 429, 500, 502, 503, 504]
DOCUMENTED = {
    "tool_call_hit": TOOL_CALL,
    "tool_call_miss": TOOL_CALL,
    "create_toolset": [201, 400, 401, 413, 429, 503, 507],
    "get_toolset": [200, 401, 404, 429, 503],
    "create_episode": [201, 400, 401, 404, 413, 429, 503, 507],
}


# -- the checks, on made-up runs --------------------------------------------------------------


def rec(phase: str, stage: str, op: str, sent: float, took: float, status: int | None) -> Any:
    code = {503: "backend_unavailable"}.get(status or 0)
    return lf.Record(phase, stage, op, sent, took, status, "5" if status == 503 else None, code)


def clean_run() -> Any:
    """A run that passes every check: one request of each kind the checks look at."""
    a = lf.Phase("A redis", stages=[("redis up", 0), ("redis killed", 10)])
    a.stages += [("redis restarted", 20), ("recovered", 21)]
    a.records = [
        rec("A", "redis up", "tool_call_hit", 1, 0.01, 200),
        rec("A", "redis killed", "tool_call_miss", 11, 1.0, 200),
        rec("A", "redis killed", "create_episode", 11, 0.01, 503),
        rec("A", "recovered", "create_episode", 22, 0.01, 201),
    ]
    a.records[2].code = "store_unavailable"
    b = lf.Phase("B backend", stages=[("backend up", 30), (lf.STOPPED, 40)])
    b.stages += [("backend continued", 48), ("recovered (SIGCONT)", 50), (lf.KILLED, 60)]
    b.stages += [(lf.RESTARTING, 65), ("recovered (restart)", 90)]
    b.records = [
        rec("B", "backend up", "tool_call_miss", 31, 1.0, 200),
        rec("B", lf.STOPPED, "tool_call_miss", 41, 5.0, 503),
        rec("B", lf.STOPPED, "tool_call_hit", 41, 0.01, 200),
        rec("B", "recovered (SIGCONT)", "tool_call_miss", 51, 1.0, 200),
        rec("B", lf.KILLED, "tool_call_miss", 61, 0.6, 503),
        rec("B", "recovered (restart)", "tool_call_miss", 91, 1.0, 200),
    ]
    return lf.Result(lf.Options(llm_timeout_s=5.0), 20.0, DOCUMENTED, {"ts_1": 200}, a, b)


def failing(run: Any) -> set[str]:
    return {c.key for c in lf.evaluate(run) if not c.ok}


KEYS = [c.key for c in lf.evaluate(clean_run())]


def test_a_clean_run_passes_every_check() -> None:
    assert failing(clean_run()) == set()
    assert len(KEYS) == len(set(KEYS)) == 13


def _lose(run: Any) -> None:
    run.redis.records[0] = replace(run.redis.records[0], status=None, error="ReadTimeout()")


def _teapot(run: Any) -> None:
    run.backend.records[0].status = 418


def _bare_503(run: Any) -> None:
    run.backend.records[1].retry_after = None


def _toolset_gone(run: Any) -> None:
    run.toolsets_after_redis_restart["ts_1"] = 404


def _call_fails_without_redis(run: Any) -> None:
    run.redis.records[1] = rec("A", "redis killed", "tool_call_miss", 11, 0.01, 503)


def _still_failing_after_redis(run: Any) -> None:
    run.redis.records[3] = rec("A", "recovered", "create_episode", 22, 0.01, 503)


def _hung_past_the_timeout(run: Any) -> None:
    run.backend.records[1].elapsed_s = 7.5  # 41 + 7.5 - 41 > 5 + 2


def _slow_refusal(run: Any) -> None:
    run.backend.records[4].elapsed_s = 3.5


def _503_while_healthy(run: Any) -> None:
    run.backend.records[0] = rec("B", "backend up", "tool_call_miss", 31, 1.0, 503)


def _hit_waits_on_backend(run: Any) -> None:
    run.backend.records[2].elapsed_s = 5.0


def _no_recovery(run: Any) -> None:
    run.backend.records[5] = rec("B", "recovered (restart)", "tool_call_miss", 91, 0.5, 503)


def _no_outage_seen(run: Any) -> None:
    del run.backend.records[1]


@pytest.mark.parametrize(
    ("spoil", "key"),
    [
        (_lose, "lost"),
        (_teapot, "documented"),
        (_bare_503, "retry_after"),
        (_toolset_gone, "toolsets_kept"),
        (_call_fails_without_redis, "calls_while_redis_down"),
        (_call_fails_without_redis, "redis_5xx"),
        (_still_failing_after_redis, "redis_recovered"),
        (_hung_past_the_timeout, "bound_503"),
        (_slow_refusal, "refused_quick"),
        (_503_while_healthy, "stray_503"),
        (_hit_waits_on_backend, "hits_during_outage"),
        (_no_recovery, "backend_recovered"),
        (_no_outage_seen, "outage_503"),
    ],
)
def test_each_check_fails_when_its_property_does_not_hold(spoil: Any, key: str) -> None:
    run = clean_run()
    spoil(run)
    assert key in failing(run)


def test_missing_parts_fail_with_the_command_that_installs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(lf.SetupError, match="make system-deps"):
        lf.RedisProcess(tmp_path)
    monkeypatch.setenv("TOOLSIM_VLLM_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(lf.SetupError, match="make vllm"):
        lf.VLLMProcess(tmp_path / "log")
    monkeypatch.setenv("TOOLSIM_VLLM_VENV", sys.prefix)  # any venv: only its python is looked at
    monkeypatch.setenv("TOOLSIM_MODEL_DIR", str(tmp_path))
    with pytest.raises(lf.SetupError, match="make model"):
        lf.VLLMProcess(tmp_path / "log")


# -- the real run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("load_fault")
    try:
        run = lf.run(OPTIONS, workdir)
    except lf.SetupError as exc:
        pytest.fail(str(exc))
    report = workdir / "load_fault.json"  # every request, for a failure's post-mortem
    report.write_text(json.dumps(lf.report_json(run, lf.evaluate(run)), indent=1))
    for phase in (run.redis, run.backend):  # shown with `pytest -s`
        print("\n".join(["", *lf.table(run, phase)]))
    print(f"recovery (s): {run.recovery_s}; every request in {report}")
    return run


@pytest.mark.redis
@pytest.mark.integration
def test_every_operation_ran_in_every_phase(result: Any) -> None:
    for phase in (result.redis, result.backend):
        ran = {r.op for r in phase.records if r.status is not None and r.status < 300}
        assert ran == set(lf.OPS), f"{phase.name}: only {ran} succeeded"


@pytest.mark.redis
@pytest.mark.integration
@pytest.mark.parametrize("key", KEYS)
def test_load_and_faults(result: Any, key: str) -> None:
    check = next(c for c in lf.evaluate(result) if c.key == key)
    assert check.ok, f"{check.name}: {check.detail}"
