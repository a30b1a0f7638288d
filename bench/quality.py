"""Ungrounded observation quality: would a user believe what the packaged model returns?

32 calls of 16 everyday tools across 13 domains (weather, finance, travel, accounts, language,
news, food, film, logistics, books, sports, health, geography, jobs), each made twice through
the ToolActor: with a specific output schema, and without one (the tool then gets what the
service gives a tool without a schema: the default ``{"result"}`` before issue 12, an inferred
schema after). For each it measures:

- the plausible share by the ``quality`` gate's rules (``toolsim_toolactor.quality``), and by
  a second rule set written apart from the gate (``second_opinion`` below: other techniques,
  other thresholds), so the gate is not graded by itself;
- the share the service itself flagged (``observations[].flags``);
- generated tokens per observation (every attempt counted) and seconds per call p50/p90
  (cache misses, one call at a time);
- for the schema-less tools, the seconds spent inferring their schemas (once per tool).

    .venv/bin/python bench/quality.py [--backend embedded|vllm] [--vllm-url URL] \
        [--label before] [--compare bench/results/quality-before-embedded.json]

Results go to ``bench/results/quality-<label>-<backend>.json``; ``--compare`` prints the
before/after table against an earlier run. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import re
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, server
from toolsim.toolsets import Tool, build_toolset
from toolsim_toolactor import ActorSettings, create_app
from toolsim_toolactor import prompt as prompt_module
from toolsim_toolactor.checks import check_input, judge
from toolsim_toolactor.quality import quality_gate


def _tool(name: str, description: str, **params: Any) -> dict[str, Any]:
    properties = {k: v if isinstance(v, dict) else {"type": v} for k, v in params.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
            },
        },
    }


def _out(**fields: Any) -> dict[str, Any]:
    properties = {}
    for name, spec in fields.items():
        node = spec if isinstance(spec, dict) else {"type": spec}
        if node.get("type") == "string" and "enum" not in node:
            node = {"maxLength": 120, **node}
        properties[name] = node
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _list(maximum: int, **fields: Any) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "maxItems": maximum, "items": _out(**fields)}


@dataclass(frozen=True)
class BenchTool:
    domain: str
    definition: dict[str, Any]
    output_schema: dict[str, Any]
    calls: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        return str(self.definition["function"]["name"])


TOOLS = (
    BenchTool(
        "weather",
        _tool("get_weather", "Current weather in a city.", city="string"),
        _out(city="string", temperature_c="number", conditions="string", humidity_pct="integer"),
        ({"city": "Paris"}, {"city": "Nairobi"}),
    ),
    BenchTool(
        "finance",
        _tool("get_stock_quote", "Latest price of a stock by its ticker symbol.", symbol="string"),
        _out(symbol="string", company="string", price_usd="number", change_pct="number"),
        ({"symbol": "AAPL"}, {"symbol": "TSLA"}),
    ),
    BenchTool(
        "finance",
        _tool(
            "convert_currency",
            "Convert an amount from one currency to another at today's rate.",
            amount="number",
            from_currency="string",
            to_currency="string",
        ),
        _out(
            amount="number",
            from_currency="string",
            to_currency="string",
            rate="number",
            converted_amount="number",
        ),
        (
            {"amount": 100, "from_currency": "USD", "to_currency": "EUR"},
            {"amount": 2500, "from_currency": "JPY", "to_currency": "GBP"},
        ),
    ),
    BenchTool(
        "travel",
        _tool(
            "search_flights",
            "Find flights between two airports on a date.",
            origin="string",
            destination="string",
            date="string",
        ),
        _out(
            flights=_list(
                3, airline="string", flight_number="string", departs="string", price_usd="number"
            )
        ),
        (
            {"origin": "JFK", "destination": "LHR", "date": "2025-03-14"},
            {"origin": "SFO", "destination": "NRT", "date": "2025-07-02"},
        ),
    ),
    BenchTool(
        "accounts",
        _tool("lookup_account", "Look up a customer account by its id.", account_id="string"),
        _out(
            account_id="string",
            holder_name="string",
            account_status="string",
            balance_usd="number",
        ),
        ({"account_id": "ACC-10293"}, {"account_id": "ACC-55810"}),
    ),
    BenchTool(
        "language",
        _tool(
            "translate_text",
            "Translate a text into another language.",
            text="string",
            target_language="string",
        ),
        _out(translated_text="string", source_language="string", target_language="string"),
        (
            {"text": "Where is the train station?", "target_language": "French"},
            {"text": "Thank you for your help", "target_language": "Spanish"},
        ),
    ),
    BenchTool(
        "news",
        _tool("get_headlines", "Top news headlines on a topic.", topic="string"),
        _out(topic="string", headlines=_list(3, title="string", source="string")),
        ({"topic": "technology"}, {"topic": "football"}),
    ),
    BenchTool(
        "food",
        _tool(
            "find_restaurants",
            "Find restaurants in a city serving a cuisine.",
            city="string",
            cuisine="string",
        ),
        _out(restaurants=_list(3, name="string", address="string", rating="number")),
        ({"city": "Rome", "cuisine": "vegetarian"}, {"city": "Chicago", "cuisine": "Thai"}),
    ),
    BenchTool(
        "film",
        _tool("get_movie_info", "Facts about a film by its title.", title="string"),
        _out(title="string", year="integer", director="string", runtime_minutes="integer"),
        ({"title": "Inception"}, {"title": "Casablanca"}),
    ),
    BenchTool(
        "logistics",
        _tool(
            "track_parcel",
            "Where a parcel is, by carrier and tracking number.",
            carrier="string",
            tracking_number="string",
        ),
        _out(
            tracking_number="string",
            status="string",
            location="string",
            estimated_delivery="string",
        ),
        (
            {"carrier": "UPS", "tracking_number": "1Z999AA10123456784"},
            {"carrier": "DHL", "tracking_number": "JD014600006281230044"},
        ),
    ),
    BenchTool(
        "books",
        _tool("get_book_by_isbn", "A book's details by its ISBN.", isbn="string"),
        _out(isbn="string", title="string", author="string", publisher="string", year="integer"),
        ({"isbn": "9780141439518"}, {"isbn": "9780262033848"}),
    ),
    BenchTool(
        "finance",
        _tool("get_exchange_hours", "Trading hours of a stock exchange.", exchange="string"),
        _out(
            exchange="string",
            opens="string",
            closes="string",
            timezone="string",
            open_now="boolean",
        ),
        ({"exchange": "NYSE"}, {"exchange": "Tokyo Stock Exchange"}),
    ),
    BenchTool(
        "sports",
        _tool(
            "get_match_result",
            "Final score of the latest match between two teams.",
            home_team="string",
            away_team="string",
        ),
        _out(home_team="string", away_team="string", home_score="integer", away_score="integer"),
        (
            {"home_team": "Arsenal", "away_team": "Chelsea"},
            {"home_team": "Lakers", "away_team": "Celtics"},
        ),
    ),
    BenchTool(
        "health",
        _tool("get_drug_info", "What a medicine is used for and its side effects.", drug="string"),
        _out(drug="string", drug_class="string", used_for="string", side_effects="string"),
        ({"drug": "ibuprofen"}, {"drug": "metformin"}),
    ),
    BenchTool(
        "geography",
        _tool("get_country_facts", "Key facts about a country.", country="string"),
        _out(country="string", capital="string", population="integer", currency="string"),
        ({"country": "Kenya"}, {"country": "Peru"}),
    ),
    BenchTool(
        "jobs",
        _tool(
            "search_jobs", "Open job listings for a role in a city.", role="string", city="string"
        ),
        _out(jobs=_list(3, title="string", company="string", salary="string")),
        ({"role": "data engineer", "city": "Berlin"}, {"role": "nurse", "city": "Toronto"}),
    ),
)


# -- the second rule set: written apart from the gate, with other techniques ----------------

PLACEHOLDER_WORDS = re.compile(
    r"^\W*(n\.?a\.?|none|null|unknown|not (available|applicable|known|found)|tbd|xxx+|"
    r"lorem ipsum.*|string|example|sample|value|placeholder)\W*$",
    re.IGNORECASE,
)


def _scalars(value: Any, path: str = "$") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _scalars(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _scalars(v, f"{path}[{i}]")]
    return [(path, value)]


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = (
            set(node.get("properties", {})) if isinstance(node.get("properties"), dict) else set()
        )
        return found.union(*(_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node))
    return set()


def _field(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path).rsplit(".", 1)[-1].lower()


def _objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value, *(o for v in value.values() for o in _objects(v))]
    if isinstance(value, list):
        return [o for v in value for o in _objects(v)]
    return []


def _emptiness(texts: list[tuple[str, str]], leaves: list[tuple[str, Any]]) -> str | None:
    if not leaves or all(v in ("", None) or v == [] for _, v in leaves):
        return "empty"
    if any(sum(ch.isalnum() for ch in v) < 2 for _, v in texts):
        return "empty"  # fewer than two letters or digits in a value
    if texts and sum(1 for _, v in texts if PLACEHOLDER_WORDS.match(v)) >= max(1, len(texts) / 2):
        return "placeholder"
    return None


def _syntax(texts: list[tuple[str, str]]) -> str | None:
    for _, value in texts:
        v = value.strip()
        marks = sum(ch in '{}[]<>"=;|\\' for ch in v)  # not ':' (times) nor "'" (names)
        if (len(v) >= 6 and marks / len(v) > 0.12) or not (
            v[:1].isalnum() or v[:1] in "\"'(+-$\u20ac\u00a3#"
        ):
            return "syntax"  # bracket and quote soup, or a value that starts mid-sentence
    return None


def _template(
    texts: list[tuple[str, str]], tool: Tool, argument_texts: list[str], prompt_text: str
) -> str | None:
    keys = {k.lower() for k in _keys(tool.output_schema) | _keys(tool.parameters)}
    for _, v in texts:
        low = v.lower()
        for arg in argument_texts:
            low = low.replace(arg, "")
        if any(k in low for k in keys if "_" in k) or (low.strip() in keys and "_" in low):
            return "template"  # a field name written as a value (or inside a formula)
        if re.search(r"\b(tool|json|schema|argument|arguments|function)\b", low):
            return "template"  # it talks about the simulation, not the world
        if len(low) >= 24:
            match = difflib.SequenceMatcher(None, low, prompt_text.lower(), autojunk=False)
            block = match.find_longest_match(0, len(low), 0, len(prompt_text))
            if block.size >= 24:
                return "template"  # a run of 24+ characters lifted from the prompt
    return None


def _degenerate(value: Any, texts: list[tuple[str, str]]) -> str | None:
    for _, v in texts:
        if len(v) >= 30 and len(zlib.compress(v.encode())) / len(v.encode()) < 0.5:
            return "degenerate"
        tokens = re.findall(r"[A-Za-z]+", v.lower())
        if any(tokens[i] == tokens[i + 1] == tokens[i + 2] for i in range(len(tokens) - 2)):
            return "degenerate"
    lowered = [v.strip().lower() for _, v in texts if len(v.strip()) >= 3]
    if len(lowered) >= 3 and len(set(lowered)) == 1:
        return "degenerate"
    for obj in _objects(value):
        strings = [v for v in obj.values() if isinstance(v, str) and len(v) >= 4]
        for i, a in enumerate(strings):
            for b in strings[i + 1 :]:
                if difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() > 0.9:
                    return "duplicate"  # two fields of one record saying the same thing
    return None


def _misplaced(texts: list[tuple[str, str]], arguments: dict[str, Any]) -> str | None:
    """An argument value written into a field of another name (a capital equal to the
    country asked about, an airline equal to the origin airport)."""
    by_value = {
        str(v).strip().lower(): k.lower() for k, v in arguments.items() if isinstance(v, str)
    }
    for path, v in texts:
        owner = by_value.get(v.strip().lower())
        if owner is not None and owner != _field(path) and owner not in _field(path):
            return "misplaced_argument"
    return None


def _grounding(texts: list[tuple[str, str]], arguments: dict[str, Any]) -> str | None:
    argument_texts = [str(v).lower() for v in arguments.values() if isinstance(v, str)]
    words = [w for _, v in texts for w in re.findall(r"[a-z0-9]+", v.lower())]
    named = {k.lower() for k in arguments} & {_field(p) for p, _ in texts}
    string_args = [a for a in argument_texts if re.search(r"[a-z]", a) and len(a) >= 3]
    if string_args and (len(words) >= 8 or named):
        stems = {w[:4] for w in words if len(w) >= 3}
        blob = " ".join(v.lower() for _, v in texts)
        if not any(
            a in blob or any(w[:4] in stems for w in re.findall(r"[a-z0-9]+", a) if len(w) >= 3)
            for a in string_args
        ):
            return "ungrounded"  # a text-bearing observation naming nothing of the call
    return None


def second_opinion(
    tool: Tool, arguments: dict[str, Any], value: Any, prompt_text: str
) -> str | None:
    """Why an observation is implausible by rules independent of the gate, or None."""
    leaves = _scalars(value)
    texts = [(p, v) for p, v in leaves if isinstance(v, str)]
    argument_texts = [
        str(v).lower() for v in arguments.values() if isinstance(v, str | int | float)
    ]
    return (
        _emptiness(texts, leaves)
        or _syntax(texts)
        or _template(texts, tool, argument_texts, prompt_text)
        or _degenerate(value, texts)
        or _misplaced(texts, arguments)
        or _grounding(texts, arguments)
    )


# -- the run ------------------------------------------------------------------------------


@dataclass
class Result:
    domain: str
    tool: str
    variant: str
    """``explicit``: with the tool's output schema; ``none``: without one."""
    arguments: dict[str, Any]
    content: str
    seconds: float
    completion_tokens: float
    source: str
    flags: list[str] = field(default_factory=list)
    gate: str | None = None
    second: str | None = None
    prompt: str = ""
    """The simulator's system prompt for this call (what a copy is measured against)."""


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def prompt_texts() -> tuple[str, ...]:
    """The simulator prompt's fixed texts (none were declared before issue 12)."""
    return tuple(getattr(prompt_module, "PROMPT_TEXTS", ()))


def system_prompt(tool: Tool, arguments: dict[str, Any]) -> str:
    return prompt_module.build_messages(tool, arguments, None)[0]["content"]


def judge_one(
    tool: Tool, arguments: dict[str, Any], value: Any, system: str
) -> tuple[str | None, str | None]:
    """(gate reason, second-opinion reason) of one observation, given the prompt it had."""
    gate = quality_gate((*prompt_texts(), system))
    verdict = judge((gate,), check_input(tool, arguments, value))
    return verdict.failures.get("quality"), second_opinion(tool, arguments, value, system)


class Bench:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def tokens(self) -> float:
        return _metric((await self.http.get("/metrics")).text, "toolsim_completion_tokens_total")

    async def infer(self, bench_tool: BenchTool) -> tuple[Tool, float]:
        """Register the tool without an output schema: the schema it gets, and the time."""
        started = time.perf_counter()
        r = await self.http.post("/v1/toolsets", json={"tools": [bench_tool.definition]})
        seconds = time.perf_counter() - started
        r.raise_for_status()
        record = r.json()
        schema = record["output_schemas"][bench_tool.name]
        toolset = build_toolset([bench_tool.definition], {bench_tool.name: schema})
        return toolset.tools[bench_tool.name], seconds

    async def call(
        self, bench_tool: BenchTool, tool: Tool, variant: str, arguments: dict[str, Any]
    ) -> Result:
        body: dict[str, Any] = {
            "tools": [bench_tool.definition],
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": bench_tool.name, "arguments": json.dumps(arguments)},
                }
            ],
        }
        if variant == "explicit":
            body["output_schemas"] = {bench_tool.name: bench_tool.output_schema}
        before = await self.tokens()
        started = time.perf_counter()
        r = await self.http.post("/v1/tool_calls", json=body)
        seconds = time.perf_counter() - started
        tokens = await self.tokens() - before
        if r.status_code != 200:
            return Result(
                bench_tool.domain,
                tool.name,
                variant,
                arguments,
                r.text,
                seconds,
                tokens,
                "error",
                gate="error",
                second="error",
            )
        payload = r.json()
        info = payload["observations"][0]
        content = payload["messages"][0]["content"]
        system = system_prompt(tool, arguments)
        gate, second = judge_one(tool, arguments, json.loads(content), system)
        return Result(
            bench_tool.domain,
            tool.name,
            variant,
            arguments,
            content,
            seconds,
            tokens,
            info["source"],
            list(info.get("flags") or []),
            gate,
            second,
            system,
        )


async def run(args: argparse.Namespace, vllm_url: str | None) -> dict[str, Any]:
    settings = ActorSettings(
        backend=args.backend,
        vllm_url=vllm_url or "http://127.0.0.1:8000/v1",
        embedded_threads=args.threads,
        llm_timeout_s=600,
        log_level="warning",
        max_generation_attempts=args.attempts,
    )
    app = create_app(settings)
    results: list[Result] = []
    inference: list[float] = []
    schemas: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://actor", timeout=900
        )
        bench = Bench(http)
        for bench_tool in TOOLS[: args.tools]:
            explicit = build_toolset(
                [bench_tool.definition], {bench_tool.name: bench_tool.output_schema}
            ).tools[bench_tool.name]
            bare, seconds = await bench.infer(bench_tool)
            inference.append(seconds)
            schemas[bench_tool.name] = bare.output_schema
            for variant, tool in (("explicit", explicit), ("none", bare)):
                for arguments in bench_tool.calls:
                    result = await bench.call(bench_tool, tool, variant, arguments)
                    results.append(result)
                    if args.verbose:
                        verdict = f"gate={result.gate} second={result.second} flags={result.flags}"
                        call = f"{tool.name}({json.dumps(arguments)})"
                        print(
                            f"{result.seconds:5.1f}s {variant:8s} {call} "
                            f"-> {result.content[:160]}  [{verdict}]",
                            flush=True,
                        )
        await http.aclose()
    return {
        "label": args.label,
        "backend": args.backend,
        "prompt_version": prompt_module.PROMPT_VERSION,
        "attempts": args.attempts,
        "results": [asdict(r) for r in results],
        "inference_seconds": inference,
        "schemas": schemas,
    }


def rejudge(run: dict[str, Any]) -> dict[str, Any]:
    """A stored run judged again by the current rules (each call with the prompt it had)."""
    explicit = {t.name: t.output_schema for t in TOOLS}
    definitions = {t.name: t.definition for t in TOOLS}
    for r in run["results"]:
        if r["source"] == "error":
            continue
        schema = explicit[r["tool"]] if r["variant"] == "explicit" else run["schemas"][r["tool"]]
        tool = build_toolset([definitions[r["tool"]]], {r["tool"]: schema}).tools[r["tool"]]
        r["gate"], r["second"] = judge_one(
            tool, r["arguments"], json.loads(r["content"]), r["prompt"]
        )
    return run


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def summary(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    results = run["results"]
    for variant in ("explicit", "none", "all"):
        rows = [r for r in results if variant == "all" or r["variant"] == variant]
        misses = [r["seconds"] for r in rows if r["source"] == "simulated"]
        n = max(len(rows), 1)
        out[variant] = {
            "calls": len(rows),
            "gate": sum(r["gate"] is None for r in rows) / n,
            "second": sum(r["second"] is None for r in rows) / n,
            "both": sum(r["gate"] is None and r["second"] is None for r in rows) / n,
            "flagged": sum(bool(r["flags"]) for r in rows) / n,
            "tokens": sum(r["completion_tokens"] for r in rows) / n,
            "p50": percentile(misses, 0.5),
            "p90": percentile(misses, 0.9),
        }
    return out


def report(run: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    domains = len({r["domain"] for r in run["results"]})
    print(
        f"backend={run['backend']} label={run['label']} prompt v{run['prompt_version']} "
        f"{len(run['results'])} calls of {len(run['schemas'])} tools in {domains} domains"
    )
    rows = [("this run", summary(run))]
    if baseline is not None:
        rows.insert(0, (f"{baseline['label']} (v{baseline['prompt_version']})", summary(baseline)))
    print(
        f"{'run':22s} {'schema':9s} {'gate':>6s} {'second':>7s} {'both':>6s} {'flagged':>8s} "
        f"{'tokens':>7s} {'p50 s':>6s} {'p90 s':>6s}"
    )
    for name, table in rows:
        for variant in ("explicit", "none", "all"):
            s = table[variant]
            print(
                f"{name:22s} {variant:9s} {s['gate']:6.2f} {s['second']:7.2f} {s['both']:6.2f} "
                f"{s['flagged']:8.2f} {s['tokens']:7.1f} {s['p50']:6.2f} {s['p90']:6.2f}"
            )
    reasons: dict[str, int] = {}
    for r in run["results"]:
        for kind in ("gate", "second"):
            if r[kind] is not None:
                reasons[f"{kind}:{r[kind]}"] = reasons.get(f"{kind}:{r[kind]}", 0) + 1
    print("failures:", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")
    inference = run["inference_seconds"]
    print(f"output schema inference: {sum(inference):.1f} s for {len(inference)} tools")
    now = summary(run)
    headline = (
        f"HEADLINE plausible (gate / second rules): explicit {now['explicit']['gate']:.2f} / "
        f"{now['explicit']['second']:.2f}, without schema {now['none']['gate']:.2f} / "
        f"{now['none']['second']:.2f}; p50 {now['all']['p50']:.2f} s p90 {now['all']['p90']:.2f} s"
    )
    if baseline is not None:
        base = summary(baseline)["all"]
        headline += f" ({now['all']['p50'] / max(base['p50'], 1e-9):.2f}x {baseline['label']} p50)"
    print(headline + f" ({run['backend']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "vllm"], default="embedded")
    parser.add_argument("--vllm-url", help="use this server instead of starting one (vllm)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (embedded)")
    parser.add_argument("--label", default="run")
    parser.add_argument(
        "--attempts", type=int, default=3, help="generations per call (1: first attempts only)"
    )
    parser.add_argument("--tools", type=int, default=len(TOOLS), help="first N tools only")
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON to compare with")
    parser.add_argument("--rejudge", action="store_true", help="judge --compare's run again")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.rejudge:
        if args.compare is None:
            parser.error("--rejudge needs --compare FILE")
        report(rejudge(json.loads(args.compare.read_text())), None)
        return
    if args.backend == "vllm" and not args.vllm_url:
        port = free_port()
        cmd = ["bash", str(ROOT / "scripts" / "serve-vllm.sh"), str(port)]
        with server(cmd, port, timeout_s=900) as url:
            measured = asyncio.run(run(args, url + "/v1"))
    else:
        measured = asyncio.run(run(args, args.vllm_url))
    out = ROOT / "bench" / "results" / f"quality-{args.label}-{args.backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(measured, indent=1))
    baseline = rejudge(json.loads(args.compare.read_text())) if args.compare else None
    report(measured, baseline)


if __name__ == "__main__":
    main()
