"""The ToolMaker's logic: task → classified, generated, validated, merged, stored toolset.

Also the two ways in without generation: hand-written tools and an OpenAPI document. Every
toolset lands in the shared registry under its content-addressed id, where the ToolActor
finds it. A generation request is keyed by a digest of everything that determines its result,
so asking twice costs one generation, across processes when the registry is Redis.
"""

from __future__ import annotations

from typing import Any

from toolsim.errors import InvalidRequestError, InvalidToolDefinitionError, ToolsetNotFoundError
from toolsim.jsonutil import digest
from toolsim.registry import Registry
from toolsim.schema_inference import OutputSchemaInferrer
from toolsim.singleflight import SingleFlight
from toolsim.tools import utility_definitions
from toolsim.toolsets import build_toolset
from toolsim_toolmaker.config import MakerSettings
from toolsim_toolmaker.generation import PROMPT_VERSION, ToolGenerator
from toolsim_toolmaker.metrics import MakerMetrics
from toolsim_toolmaker.openapi_import import STATUS_OUTPUT_SCHEMA, ImportedTool, import_openapi
from toolsim_toolmaker.protocol import ToolsetRequest
from toolsim_toolmaker.taxonomy import DEFAULT_UTILITIES, STATEFUL_BY_DEFAULT
from toolsim_toolmaker.validation import check_strict_tool

Record = dict[str, Any]


class ToolMakerService:
    def __init__(
        self,
        *,
        registry: Registry,
        generator: ToolGenerator,
        inferrer: OutputSchemaInferrer,
        metrics: MakerMetrics,
        settings: MakerSettings,
        model_name: str,
    ) -> None:
        self._registry = registry
        self._generator = generator
        self._inferrer = inferrer
        self._metrics = metrics
        self._settings = settings
        self._model_name = model_name
        self._flights: SingleFlight[Record] = SingleFlight()

    async def create(self, request: ToolsetRequest) -> Record:
        if request.task is not None:
            return await self.from_task(
                request.task, request.max_tools, request.utility_tools, request.seed or 0
            )
        return await self.from_tools(
            request.tools or [],
            request.output_schemas,
            request.stateful,
            infer=request.infer_output_schemas is not False,
        )

    async def from_task(
        self, task: str, max_tools: int, utility_tools: list[str] | None, seed: int
    ) -> Record:
        task = self._check_task(task, max_tools, utility_tools)
        key = "maker:" + digest(
            {
                "v": PROMPT_VERSION,
                "m": self._model_name,
                "task": task,
                "n": max_tools,
                "u": utility_tools,
                "s": seed,
            }
        )
        cached = await self._registry.get_alias(key)
        if cached is not None and (record := await self._registry.get_toolset(cached)):
            self._metrics.generation_cache_hits.inc()
            return record
        record, joined = await self._flights.run(
            key, lambda: self._generate(key, task, max_tools, utility_tools, seed)
        )
        if joined:
            self._metrics.generation_cache_hits.inc()
        return record

    async def _generate(
        self, key: str, task: str, max_tools: int, utility_tools: list[str] | None, seed: int
    ) -> Record:
        task_class = await self._generator.classify(task, seed)
        names = list(DEFAULT_UTILITIES[task_class]) if utility_tools is None else utility_tools
        generated = await self._generator.generate(
            task,
            task_class,
            max_tools,
            utility_definitions(names),
            seed,
            stateful=task_class in STATEFUL_BY_DEFAULT,
        )
        record = await self._store(generated.toolset.to_record(), task_class)
        await self._registry.put_alias(key, record["id"])
        self._metrics.toolsets.labels("generated").inc()
        return record

    async def from_tools(
        self,
        tools: list[dict[str, Any]],
        output_schemas: dict[str, Any] | None,
        stateful: dict[str, bool] | None,
        *,
        infer: bool = True,
    ) -> Record:
        toolset = build_toolset(tools, output_schemas, stateful)  # refused before inference
        if infer:
            schemas = await self._inferrer.complete(tools, output_schemas)
            if schemas.inferred:
                toolset = build_toolset(
                    tools, schemas.output_schemas, stateful, inferred=schemas.inferred
                )
        for i, definition in enumerate(toolset.definitions()):
            if definition["function"].get("strict") is True:
                name = definition["function"]["name"]
                check_strict_tool(definition, toolset.tools[name].output_schema, f"tools[{i}]")
        self._metrics.toolsets.labels("hand_written").inc()
        return await self._store(toolset.to_record(), None)

    async def from_openapi(self, document: dict[str, Any], *, infer: bool = True) -> Record:
        """One tool per operation; an operation that declares no response body to read from
        (see ``_undeclared``) gets an inferred output schema unless ``infer`` is off."""
        imported = import_openapi(document, max_tools=128)
        outputs = {t.definition["function"]["name"]: t.output_schema for t in imported}
        stateful = {
            t.definition["function"]["name"]: t.method not in ("get", "head", "options")
            for t in imported
        }
        inferred: tuple[str, ...] = ()
        if infer:
            given = {_name(t): t.output_schema for t in imported if not _undeclared(t)}
            schemas = await self._inferrer.complete([t.definition for t in imported], given)
            outputs = {**outputs, **schemas.output_schemas}
            inferred = schemas.inferred
        tools = [
            _strict_if_it_is(t.definition, outputs[t.definition["function"]["name"]])
            for t in imported
        ]
        self._metrics.toolsets.labels("openapi").inc()
        toolset = build_toolset(tools, outputs, stateful, inferred=inferred)
        return await self._store(toolset.to_record(), None)

    async def get(self, toolset_id: str) -> Record:
        record = await self._registry.get_toolset(toolset_id)
        if record is None:
            raise ToolsetNotFoundError(f"no toolset {toolset_id!r}", param="toolset_id")
        return _public(record)

    async def page(self, offset: int, limit: int) -> tuple[list[Record], int]:
        records, total = await self._registry.list_toolsets(offset, limit)
        return [_public(r) for r in records], total

    async def _store(self, record: Record, task_class: str | None) -> Record:
        record = {**record, "task_class": task_class}
        await self._registry.put_toolset(record)
        return _public(record)

    def _check_task(self, task: str, max_tools: int, utility_tools: list[str] | None) -> str:
        task = task.strip()
        if not task:
            raise InvalidRequestError("the task is empty", param="task")
        if len(task) > self._settings.max_task_chars:
            raise InvalidRequestError(
                f"the task is longer than {self._settings.max_task_chars} characters",
                param="task",
            )
        if not 1 <= max_tools <= self._settings.max_tools_limit:
            raise InvalidRequestError(
                f"max_tools must be between 1 and {self._settings.max_tools_limit}",
                param="max_tools",
            )
        if utility_tools is not None:
            utility_definitions(utility_tools)  # raises naming an unknown one
        return task


_UNTYPED_RESULT: dict[str, Any] = {
    "type": "object",
    "properties": {"result": {}},
    "required": ["result"],
    "additionalProperties": False,
}
"""What the importer makes of a JSON response whose schema is missing or empty."""
_ANNOTATIONS = frozenset({"type", "description", "title"})


def _undeclared(tool: ImportedTool) -> bool:
    """Whether the document leaves the tool's output unsaid: a JSON response without a
    schema, a bare ``{"type": "object"}``, or a read (``get``) with no JSON response."""
    schema = tool.output_schema
    if schema == _UNTYPED_RESULT or (
        schema.get("type") == "object" and set(schema) <= _ANNOTATIONS
    ):
        return True
    return tool.method == "get" and schema == STATUS_OUTPUT_SCHEMA


def _name(tool: ImportedTool) -> str:
    return str(tool.definition["function"]["name"])


def _strict_if_it_is(definition: dict[str, Any], output_schema: dict[str, Any]) -> dict[str, Any]:
    """Claim ``"strict": true`` only for a tool that passes the strict subset all the way down
    (an API's nested schemas often keep optional fields and open objects)."""
    function = {k: v for k, v in definition["function"].items() if k != "strict"}
    plain = {"type": "function", "function": function}
    try:
        check_strict_tool(
            {"type": "function", "function": {**function, "strict": True}},
            output_schema,
            "tools[0]",
        )
    except InvalidToolDefinitionError:
        return plain
    return {"type": "function", "function": {**function, "strict": True}}


def _public(record: Record) -> Record:
    public = {
        "id": record["id"],
        "task_class": record.get("task_class"),
        "tools": record["tools"],
        "output_schemas": record["output_schemas"],
        "stateful": record["stateful"],
    }
    if record.get("inferred_output_schemas"):
        public["inferred_output_schemas"] = record["inferred_output_schemas"]
    return public
