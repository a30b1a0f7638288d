"""The real utility tools: BM25 search on the shared corpora, the exact calculator, the sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from toolsim.tools import (
    UTILITY_TOOLS,
    BM25Search,
    Calculator,
    LiveTool,
    PythonSandbox,
    ToolConfigurationError,
    build_utility_tools,
)
from toolsim.toolsets import build_toolset

DATA = Path(__file__).parents[1].parent / "shared" / "data"
CONTEXT = DATA / "context"


def assert_valid(tool: LiveTool, observation: dict[str, Any]) -> None:
    Draft202012Validator(tool.output_schema).validate(observation)


def assert_strict(tool: LiveTool) -> None:
    params = tool.definition["function"]["parameters"]
    assert params["additionalProperties"] is False
    assert params["required"] == list(params["properties"])
    Draft202012Validator.check_schema(tool.output_schema)
    build_toolset([tool.definition], {tool.name: tool.output_schema})  # toolsim accepts it


# --- search ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search() -> BM25Search:
    return BM25Search(
        [CONTEXT / "2wikimultihopqa_corpus.json", CONTEXT / "hotpotqa_train_corpus.json"]
    )


def test_loads_all_corpus_formats(tmp_path: Path) -> None:
    jsonl = tmp_path / "extra.jsonl"
    jsonl.write_text('{"title": "Zyx", "text": "Zyx is a made-up word."}\n\n')
    tool = BM25Search([CONTEXT / "2wikimultihopqa_corpus.json"])
    assert len(tool.passages) == 6119
    assert len(BM25Search([CONTEXT / "hotpotqa_train_corpus.json"]).passages) == 994
    musique = json.loads((CONTEXT / "musique_train_corpus.json").read_text())
    assert len(BM25Search([CONTEXT / "musique_train_corpus.json"]).passages) == len(musique)
    assert [p.title for p in BM25Search([jsonl]).passages] == ["Zyx"]


def test_bad_corpus_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('"just a string"')
    with pytest.raises(ToolConfigurationError, match=r"bad\.json"):
        BM25Search([bad])
    with pytest.raises(ToolConfigurationError, match=r"(?i)no such file"):
        BM25Search([tmp_path / "missing.json"])


async def test_hotpotqa_questions_find_a_supporting_passage(search: BM25Search) -> None:
    questions = json.loads((CONTEXT / "hotpotqa_train.json").read_text())[:20]
    for q in questions:
        observation = await search.call({"query": q["question"], "top_k": None})
        assert_valid(search, observation)
        titles = {hit["title"] for hit in observation["results"]}
        assert len(observation["results"]) == 5
        gold = {title for title, _ in q["supporting_facts"]}
        assert titles & gold, (q["question"], titles, gold)


async def test_search_results_shape_and_bounds(search: BM25Search) -> None:
    assert_strict(search)
    observation = await search.call({"query": "Emperor Taizong of Song", "top_k": 100})
    assert_valid(search, observation)
    scores = [hit["score"] for hit in observation["results"]]
    assert len(scores) == 20 and scores == sorted(scores, reverse=True)
    one = await search.call({"query": "Emperor Taizong of Song", "top_k": 1})
    assert one["results"] == observation["results"][:1]
    nothing = await search.call({"query": "the of and", "top_k": 3})
    assert nothing == {"results": []}


# --- calculator ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1/3 + 1/6", "1/2"),
        ("2**100", "1267650600228229401496703205376"),
        ("0.1 + 0.2", "0.3"),
        ("0.1 * 3 - 0.3", "0"),
        ("-(2 + 3) * 4", "-20"),
        ("7 // 2 + 7 % 2", "4"),
        ("2**-2", "1/4"),
        ("1e-3 * 2", "0.002"),
        ("sqrt(16/9)", "4/3"),
        ("8**(1/3)", "2"),
        ("abs(-1/2) + max(1, 2, 3) - min(4, 5)", "-1/2"),
        ("round(2.675, 2)", "2.68"),  # exact decimal, unlike round() on the float 2.675
        ("floor(7/2) + ceil(7/2)", "7"),
        ("sqrt(2)", "1.4142135623730951"),
        ("2 * pi", "6.283185307179586"),
        ("log(e)", "1.0"),
        ("exp(0) + cos(0) + sin(0)", "2.0"),
    ],
)
async def test_calculator_is_exact(expression: str, expected: str) -> None:
    tool = Calculator()
    observation = await tool.call({"expression": expression})
    assert observation == {"result": expected, "error": None}
    assert_valid(tool, observation)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("1/0", "division by zero"),
        ("1 +", "syntax error"),
        ("__import__('os')", "unknown function"),
        ("(1).real", "unsupported syntax: Attribute"),
        ("().__class__.__bases__", "unsupported syntax"),
        ("open", "unknown name"),
        ("2**10**10", "too large"),
        ("10**100000", "too large"),
        ("1e999999999", "too large"),
        ("exp(1000)", "too large"),
        ("sqrt(-1)", "negative"),
        ("2^3", "use **"),
        ("'a' * 3", "unsupported literal"),
        ("lambda: 1", "unsupported syntax"),
        ("1" * 1001, "longer than"),
    ],
)
async def test_calculator_returns_errors(expression: str, error: str) -> None:
    tool = Calculator()
    started = time.perf_counter()
    observation = await tool.call({"expression": expression})
    assert time.perf_counter() - started < 0.5
    assert observation["result"] == ""
    assert error in observation["error"]
    assert_valid(tool, observation)


def test_calculator_definition_is_strict() -> None:
    assert_strict(Calculator())


# --- python sandbox --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> PythonSandbox:
    return PythonSandbox(timeout_s=2.0)


@pytest.fixture
def workdirs(tmp_path: Path) -> Iterator[Path]:
    """A private parent for the sandbox's throwaway directories, to see them go."""
    root = tmp_path / "runs"
    root.mkdir()
    yield root


async def test_python_runs_code_with_stdin(sandbox: PythonSandbox) -> None:
    assert_strict(sandbox)
    ok = await sandbox.call({"code": "import sys\nprint(sys.stdin.read().upper())", "stdin": "hi"})
    assert ok == {
        "stdout": "HI\n",
        "stderr": "",
        "exit_code": 0,
        "timed_out": False,
        "truncated": False,
    }
    failed = await sandbox.call({"code": "raise SystemExit(3)", "stdin": None})
    assert failed["exit_code"] == 3
    crashed = await sandbox.call({"code": "1/0", "stdin": None})
    assert crashed["exit_code"] == 1 and "ZeroDivisionError" in crashed["stderr"]
    for observation in (ok, failed, crashed):
        assert_valid(sandbox, observation)


async def test_python_infinite_loop_times_out(sandbox: PythonSandbox) -> None:
    started = time.perf_counter()
    observation = await sandbox.call({"code": "while True:\n    pass", "stdin": None})
    elapsed = time.perf_counter() - started
    assert observation["timed_out"] is True
    assert observation["exit_code"] != 0
    assert 1.5 < elapsed < 2.0 + 1.5
    assert_valid(sandbox, observation)


async def test_python_timeout_kills_children(sandbox: PythonSandbox, tmp_path: Path) -> None:
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '60.0173'])\ntime.sleep(60)"
    observation = await sandbox.call({"code": code, "stdin": None})
    assert observation["timed_out"] is True
    await asyncio.sleep(0.2)
    sleepers = [
        p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == "sleep\x0060.0173\x00"
    ]
    assert sleepers == []


def _existing(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.lexists(p)]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


async def test_python_memory_is_capped(sandbox: PythonSandbox) -> None:
    observation = await sandbox.call(
        {"code": "x = bytearray(2 * 1024**3)\nprint('allocated')", "stdin": None}
    )
    assert observation["exit_code"] != 0
    assert "MemoryError" in observation["stderr"]
    assert "allocated" not in observation["stdout"]
    assert_valid(sandbox, observation)


@pytest.mark.parametrize("target", ["/root/x", "/work/main/x", str(Path(__file__).parent / "x")])
async def test_python_cannot_write_outside_its_directory(
    sandbox: PythonSandbox, target: str
) -> None:
    code = f"open({target!r}, 'w').write('pwned')\nprint('wrote')"
    observation = await sandbox.call({"code": code, "stdin": None})
    assert observation["exit_code"] != 0
    assert "wrote" not in observation["stdout"]
    assert target not in _existing([target])


async def test_python_has_no_network(sandbox: PythonSandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
        observation = await sandbox.call({"code": code, "stdin": None})
    assert observation["exit_code"] != 0
    assert "connected" not in observation["stdout"]
    assert "Error" in observation["stderr"]


async def test_python_output_is_truncated() -> None:
    tool = PythonSandbox(output_bytes=1000)
    observation = await tool.call({"code": "print('x' * 100_000)\nprint('done')", "stdin": None})
    assert observation["exit_code"] == 0
    assert observation["truncated"] is True
    assert observation["stdout"] == "x" * 1000
    assert_valid(tool, observation)


async def test_python_work_dir_is_removed(workdirs: Path) -> None:
    tool = PythonSandbox(workdir_root=workdirs)
    code = "import os\nopen('out.txt', 'w').write('hi')\nos.makedirs('a/b')\nos.chmod('a', 0o500)\nprint(os.getcwd())"
    observation = await tool.call({"code": code, "stdin": None})
    assert observation["exit_code"] == 0, observation
    assert observation["stdout"].startswith(str(workdirs))
    assert os.listdir(workdirs) == []


# --- registry --------------------------------------------------------------------------------


def test_build_utility_tools() -> None:
    tools = build_utility_tools(["calculator", "python"], search_corpus=[])
    assert sorted(tools) == ["calculator", "python"]
    assert all(tool.name == name for name, tool in tools.items())
    with pytest.raises(
        ToolConfigurationError, match="known: \\['calculator', 'python', 'search'\\]"
    ):
        build_utility_tools(["calculator", "browser"], search_corpus=[])
    with pytest.raises(ToolConfigurationError, match="at least one corpus"):
        build_utility_tools(["search"], search_corpus=[])
    assert set(UTILITY_TOOLS) == {"calculator", "python", "search"}
