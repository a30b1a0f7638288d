"""The ``gold`` bootstrap teacher: a grammatical trace written from the row itself.

A 135M teacher writes poor traces, so small models get a bootstrap. ``GoldPolicy`` is a
``Policy`` like any teacher and runs through the same agent loop, so its calls really go to the
ToolActor (grounded episode) and its observations are real. What it writes:

1. one ``search`` call per hop: MuSiQue rows search each step of ``question_decomposition``
   (``QuestionRow.subquestions``, ``#k`` already resolved, ``>>`` relations as plain words);
   other rows search the question itself. At most ``max_calls`` calls.
2. a final turn that reads the observations it received: when one of them contains a gold answer
   (``answers.answer_in_text``), it answers with that gold answer and says the results hold it;
   otherwise it answers ``unknown`` and its think says the evidence is missing
   (``NO_EVIDENCE_ANSWER``). It never claims what the tools did not return, so its traces are
   consistent by construction; the "unknown" ones score as wrong and are never kept for SFT.

The search tool is the toolset's ``search`` (the ToolMaker's utility), else the first tool with a
string parameter; its other required arguments get their schema's null, default, first enum
value or a small placeholder, and are checked with jsonschema before any call is made.
Records of these traces carry ``teacher.kind = "gold"``, and reports keep their numbers apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from toolsim_trainer.answers import answer_in_text
from toolsim_trainer.data import QuestionRow
from toolsim_trainer.grammar import AssistantTurn, ToolCallItem, render_turn
from toolsim_trainer.policy import Policy, PolicyOutput
from toolsim_trainer.traces.records import evidence_text

NO_EVIDENCE_ANSWER = "unknown"
"""The gold bootstrap's answer when no observation it received contains a gold answer."""


class GoldError(ValueError):
    """The gold bootstrap cannot write a trace for this toolset (no search-like tool)."""


@dataclass(frozen=True)
class SearchTool:
    """How to call the toolset's search: the tool, its query parameter, its other arguments."""

    name: str
    query_param: str
    fixed: dict[str, Any]
    parameters: dict[str, Any]

    def call(self, query: str) -> ToolCallItem:
        return ToolCallItem(self.name, {self.query_param: query, **self.fixed})


def find_search_tool(tools: Sequence[dict[str, Any]]) -> SearchTool:
    """The toolset's ``search`` tool, else the first with a string parameter."""
    functions = [t.get("function", t) for t in tools]
    ordered = sorted(functions, key=lambda f: f.get("name") != "search")
    for function in ordered:
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        query = _query_param(parameters)
        if query is None:
            continue
        fixed = {
            name: _placeholder(schema)
            for name, schema in parameters.get("properties", {}).items()
            if name != query and name in parameters.get("required", [])
        }
        tool = SearchTool(str(function["name"]), query, fixed, parameters)
        errors = list(_validator(parameters).iter_errors(tool.call("probe").arguments))
        if not errors:
            return tool
    names = [f.get("name") for f in functions]
    raise GoldError(f"the gold teacher needs a search-like tool (a string parameter); got {names}")


QUERY_DROPS = str.maketrans({'"': " ", "\\": " ", ">": " "})
"""Left out of queries: a search needs no quotes, and a policy that copies a quoted title into
the call's JSON string unescaped breaks the call (``bad_tool_call_json`` was every grammar error
of the SFT policy on held-out questions); ``>>`` joins MuSiQue's decomposition steps."""


def gold_queries(row: QuestionRow, max_calls: int) -> list[str]:
    """One search query per hop (the decomposition when the row has one), at most ``max_calls``:
    the question's words, without quotes or backslashes."""
    steps = row.subquestions or (row.question,)
    queries = [" ".join(step.translate(QUERY_DROPS).split()) for step in steps]
    return queries[: max(1, max_calls)]


def call_turn(search: SearchTool, queries: Sequence[str], step: int) -> AssistantTurn:
    """The think and the search call of hop ``step``."""
    query = queries[step]
    if len(queries) == 1:
        think = f"I will search for the question: {query}"
    elif step == 0:
        think = f"This takes {len(queries)} steps. First I need: {query} I will search for it."
    else:
        think = f"Next I need: {query} I will search for it."
    return AssistantTurn(think=think, tool_calls=(search.call(query),))


def final_turn(golds: Sequence[str], observations: Sequence[str]) -> AssistantTurn:
    """The answer turn: the gold answer when an observation holds it, else ``unknown``."""
    text = evidence_text(observations)
    for gold in golds:
        if answer_in_text([gold], text):
            return AssistantTurn(think=f"The search results say the answer is {gold}.", answer=gold)
    return AssistantTurn(
        think="The search results do not contain the answer, so I cannot give it.",
        answer=NO_EVIDENCE_ANSWER,
    )


class GoldPolicy(Policy):
    """Writes the gold bootstrap trace of one row (one instance per row and candidate)."""

    kind = "gold"

    def __init__(self, row: QuestionRow, tools: Sequence[dict[str, Any]], *, max_calls: int):
        self.name = "gold"
        self.row = row
        self.search = find_search_tool(tools)
        self.queries = gold_queries(row, max_calls)

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        step = sum(m.get("role") == "assistant" for m in messages)
        if step < len(self.queries):
            turn = call_turn(self.search, self.queries, step)
        else:
            observed = [str(m.get("content", "")) for m in messages if m.get("role") == "tool"]
            turn = final_turn(self.row.answers, [o for o in observed if not _is_error(o)])
        return PolicyOutput(text=render_turn(turn), finish_reason="stop")


def _is_error(content: str) -> bool:
    """An error observation (``{"error": ...}``) is not evidence."""
    return content.lstrip().startswith('{"error"')


def _query_param(parameters: dict[str, Any]) -> str | None:
    properties: dict[str, Any] = parameters.get("properties", {})
    if "query" in properties and _allows(properties["query"], "string"):
        return "query"
    return next((n for n, s in properties.items() if _allows(s, "string")), None)


def _allows(schema: dict[str, Any], kind: str) -> bool:
    declared = schema.get("type")
    return declared == kind or (isinstance(declared, list) and kind in declared)


def _placeholder(schema: dict[str, Any]) -> Any:
    """The least committal valid value: null when allowed, else default, enum, small values."""
    if _allows(schema, "null"):
        return None
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    placeholders: dict[str, Any] = {
        "integer": max(1, int(schema.get("minimum", 1))),
        "number": max(1.0, float(schema.get("minimum", 1.0))),
        "boolean": False,
        "array": [],
        "object": {},
        "string": "",
    }
    declared = schema.get("type")
    kinds = declared if isinstance(declared, list) else [declared]
    return next((placeholders[k] for k in kinds if k in placeholders), None)


def _validator(schema: dict[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)
