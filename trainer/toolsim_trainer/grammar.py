"""The trace grammar: one module that generation, SFT, GRPO, rewards and evaluation share.

A trace is Qwen2.5/Hermes ChatML, the format vLLM's ``hermes`` tool-call parser reads. An
assistant turn is free reasoning, then either tool calls or a final answer::

    <think>REASONING</think>
    <tool_call>
    {"name": "search", "arguments": {"query": "..."}}
    </tool_call>

    <think>REASONING</think>
    <answer>ANSWER</answer>

Tool results come back in a ``user`` turn as ``<tool_response>...</tool_response>`` blocks. The
text of an assistant turn is exactly what TRL's ``qwen2_5.jinja`` renders for an assistant
message whose ``content`` is the ``<think>`` block (plus the ``<answer>`` block for a final
turn) and whose ``tool_calls`` hold the calls, so SFT trains on what the policy must write and
the same trace converts losslessly to and from OpenAI chat messages.

``parse_turn`` returns the structured turn or the first ``GrammarError`` (a stable rule name
and the character where it broke); ``render_turn`` is its inverse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SYSTEM_PROMPT = (
    "You answer questions by using tools. In every turn, first think inside <think></think>. "
    "Then either call tools, each call as <tool_call>\n"
    '{"name": <tool-name>, "arguments": <args-json-object>}\n</tool_call>, '
    "or, when you know the answer, give it inside <answer></answer> as a short phrase "
    "(a name, a date, a number, yes or no). Tool results come back inside "
    "<tool_response></tool_response>; never write them yourself."
)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

_ANY_TAG = re.compile(r"</?(?:think|tool_call|answer|tool_response)>")

RULES: dict[str, str] = {
    "empty_turn": "the turn has no text",
    "missing_think": "a turn starts with <think>...</think>",
    "unclosed_think": "<think> needs its </think>",
    "nested_tag": "tags do not nest: no <think>, <tool_call> or <answer> inside another block",
    "invented_tool_response": "<tool_response> is written by the tools, never by the policy",
    "missing_action": "after </think> comes <tool_call> or <answer>",
    "unclosed_tool_call": "<tool_call> needs its </tool_call>",
    "bad_tool_call_json": 'a tool call holds one JSON object {"name": ..., "arguments": {...}}',
    "tool_call_shape": "a tool call has exactly a string 'name' and an object 'arguments'",
    "unclosed_answer": "<answer> needs its </answer>",
    "empty_answer": "the answer is not empty",
    "mixed_actions": "a turn either calls tools or answers, not both",
    "trailing_text": "nothing follows the last </tool_call> or </answer>",
}
"""Every rule the parser checks, by its stable name."""


@dataclass(frozen=True)
class ToolCallItem:
    """One call as the policy wrote it; ``id`` is assigned when the call is sent."""

    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class AssistantTurn:
    """Reasoning plus either tool calls or an answer."""

    think: str
    tool_calls: tuple[ToolCallItem, ...] = ()
    answer: str | None = None


@dataclass(frozen=True)
class ToolResponse:
    tool_call_id: str
    content: str


@dataclass(frozen=True)
class ToolTurn:
    """The observations of one assistant turn's calls, in call order."""

    responses: tuple[ToolResponse, ...]


Turn = AssistantTurn | ToolTurn


@dataclass(frozen=True)
class GrammarError:
    """Where and how a text breaks the grammar: ``rule`` is a key of ``RULES``."""

    rule: str
    position: int
    message: str

    def __str__(self) -> str:
        return f"{self.rule} at character {self.position}: {self.message}"


@dataclass
class Trace:
    """A question and the turns that answer it."""

    question: str
    turns: list[Turn] = field(default_factory=list)
    system: str = SYSTEM_PROMPT

    @property
    def assistant_turns(self) -> list[AssistantTurn]:
        return [t for t in self.turns if isinstance(t, AssistantTurn)]

    @property
    def tool_calls(self) -> list[ToolCallItem]:
        return [c for t in self.assistant_turns for c in t.tool_calls]

    @property
    def answer(self) -> str | None:
        turns = self.assistant_turns
        return turns[-1].answer if turns else None


# ---------------------------------------------------------------------------- one turn


def render_call(call: ToolCallItem) -> str:
    """The block the Qwen2.5 template renders (its ``tojson`` is ``json.dumps``, non-ASCII kept)."""
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"\n<tool_call>\n{body}\n</tool_call>"


def render_content(turn: AssistantTurn) -> str:
    """The assistant message ``content``: the think block, plus the answer in a final turn."""
    content = f"<think>{turn.think}</think>"
    if turn.answer is not None:
        content += f"\n<answer>{turn.answer}</answer>"
    return content


def render_turn(turn: AssistantTurn) -> str:
    """The text of one assistant turn, without the closing ``<|im_end|>``."""
    return render_content(turn) + "".join(render_call(c) for c in turn.tool_calls)


def parse_turn(text: str) -> AssistantTurn | GrammarError:
    """Parse one assistant turn (a trailing ``<|im_end|>`` is allowed and ignored)."""
    body = text[: -len(IM_END)] if text.endswith(IM_END) else text
    return _TurnParser(body).parse()


def extract_answer(text: str) -> str | None:
    """The last ``<answer>`` content, even in an otherwise broken turn (for lenient scoring)."""
    found = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


class _TurnParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> AssistantTurn | GrammarError:
        if not self.text.strip():
            return GrammarError("empty_turn", 0, RULES["empty_turn"])
        invented = self.text.find("<tool_response>")
        if invented >= 0:
            return GrammarError("invented_tool_response", invented, RULES["invented_tool_response"])
        self._skip_ws()
        think = self._block("think", "missing_think", "unclosed_think")
        if isinstance(think, GrammarError):
            return think
        self._skip_ws()
        if self.text.startswith("<answer>", self.pos):
            return self._answer(think)
        if self.text.startswith("<tool_call>", self.pos):
            return self._calls(think)
        return GrammarError("missing_action", self.pos, RULES["missing_action"])

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _block(self, tag: str, missing: str, unclosed: str) -> str | GrammarError:
        """``<tag>inner</tag>`` at ``pos``; inner holds no other grammar tag."""
        open_, close = f"<{tag}>", f"</{tag}>"
        if not self.text.startswith(open_, self.pos):
            return GrammarError(missing, self.pos, RULES[missing])
        start = self.pos + len(open_)
        end = self.text.find(close, start)
        if end < 0:
            return GrammarError(unclosed, self.pos, RULES[unclosed])
        nested = _ANY_TAG.search(self.text, start, end)
        if nested is not None:
            return GrammarError("nested_tag", nested.start(), RULES["nested_tag"])
        self.pos = end + len(close)
        return self.text[start:end]

    def _answer(self, think: str) -> AssistantTurn | GrammarError:
        at = self.pos
        answer = self._block("answer", "missing_action", "unclosed_answer")
        if isinstance(answer, GrammarError):
            return answer
        if not answer.strip():
            return GrammarError("empty_answer", at, RULES["empty_answer"])
        return self._end(AssistantTurn(think=think, answer=answer), mixed="<tool_call>")

    def _calls(self, think: str) -> AssistantTurn | GrammarError:
        calls: list[ToolCallItem] = []
        while self.text.startswith("<tool_call>", self.pos):
            call = self._call()
            if isinstance(call, GrammarError):
                return call
            calls.append(call)
            self._skip_ws()
        return self._end(AssistantTurn(think=think, tool_calls=tuple(calls)), mixed="<answer>")

    def _call(self) -> ToolCallItem | GrammarError:
        at = self.pos
        inner = self._block("tool_call", "missing_action", "unclosed_tool_call")
        if isinstance(inner, GrammarError):
            return inner
        json_at = at + len("<tool_call>")
        try:
            value = json.loads(inner)
        except ValueError as exc:
            pos = json_at + getattr(exc, "pos", 0)
            return GrammarError("bad_tool_call_json", pos, f"{RULES['bad_tool_call_json']}: {exc}")
        if (
            not isinstance(value, dict)
            or set(value) != {"name", "arguments"}
            or not isinstance(value["name"], str)
            or not value["name"]
            or not isinstance(value["arguments"], dict)
        ):
            return GrammarError("tool_call_shape", json_at, RULES["tool_call_shape"])
        return ToolCallItem(name=value["name"], arguments=value["arguments"])

    def _end(self, turn: AssistantTurn, *, mixed: str) -> AssistantTurn | GrammarError:
        self._skip_ws()
        if self.pos == len(self.text):
            return turn
        if self.text.startswith(mixed, self.pos) or self.text.startswith("<answer>", self.pos):
            return GrammarError("mixed_actions", self.pos, RULES["mixed_actions"])
        return GrammarError("trailing_text", self.pos, RULES["trailing_text"])


# ---------------------------------------------------------------------------- messages


def trace_to_messages(
    trace: Trace, *, arguments: Literal["object", "string"] = "object"
) -> list[dict[str, Any]]:
    """OpenAI chat messages; ``arguments="object"`` is what TRL's SFT trainer reads,
    ``"string"`` the OpenAI wire format."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": trace.system},
        {"role": "user", "content": trace.question},
    ]
    for turn in trace.turns:
        if isinstance(turn, ToolTurn):
            messages.extend(
                {"role": "tool", "tool_call_id": r.tool_call_id, "content": r.content}
                for r in turn.responses
            )
            continue
        message: dict[str, Any] = {"role": "assistant", "content": render_content(turn)}
        if turn.tool_calls:
            message["tool_calls"] = [_call_message(c, arguments) for c in turn.tool_calls]
        messages.append(message)
    return messages


def _call_message(call: ToolCallItem, arguments: Literal["object", "string"]) -> dict[str, Any]:
    args: Any = call.arguments
    if arguments == "string":
        args = json.dumps(call.arguments, ensure_ascii=False)
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": args}}


class MessagesError(ValueError):
    """Chat messages that do not form a trace; the message names the index."""


def messages_to_trace(messages: Sequence[dict[str, Any]]) -> Trace:
    """The inverse of ``trace_to_messages`` (either ``arguments`` form)."""
    if len(messages) < 2 or messages[0].get("role") != "system":
        raise MessagesError("messages[0] must be the system message")
    if messages[1].get("role") != "user":
        raise MessagesError("messages[1] must be the user question")
    trace = Trace(question=str(messages[1]["content"]), system=str(messages[0]["content"]))
    pending: list[ToolResponse] = []
    for i, message in enumerate(messages[2:], start=2):
        role = message.get("role")
        if role == "tool":
            pending.append(ToolResponse(str(message.get("tool_call_id", "")), message["content"]))
            continue
        if pending:
            trace.turns.append(ToolTurn(tuple(pending)))
            pending = []
        if role != "assistant":
            raise MessagesError(f"messages[{i}]: expected role assistant or tool, got {role!r}")
        trace.turns.append(_assistant_from_message(message, i))
    if pending:
        trace.turns.append(ToolTurn(tuple(pending)))
    return trace


def _assistant_from_message(message: dict[str, Any], index: int) -> AssistantTurn:
    content = str(message.get("content") or "")
    calls = tuple(_call_from_message(c, index) for c in message.get("tool_calls") or ())
    parsed = parse_turn(content + "".join(render_call(c) for c in calls))
    if isinstance(parsed, GrammarError):
        raise MessagesError(f"messages[{index}]: {parsed}")
    return AssistantTurn(parsed.think, calls, parsed.answer)


def _call_from_message(raw: dict[str, Any], index: int) -> ToolCallItem:
    function = raw.get("function", raw)
    args = function.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as exc:
            raise MessagesError(f"messages[{index}]: tool call arguments are not JSON") from exc
    if not isinstance(args, dict):
        raise MessagesError(f"messages[{index}]: tool call arguments must be an object")
    return ToolCallItem(name=str(function["name"]), arguments=args, id=str(raw.get("id", "")))


# ---------------------------------------------------------------------------- ChatML text

_NEXT_ASSISTANT = f"{IM_START}assistant\n"


def render_tool_turn(turn: ToolTurn) -> str:
    """A tool turn as the Qwen2.5 template renders it, followed by the next assistant header."""
    blocks = "".join(f"\n<tool_response>\n{r.content}\n</tool_response>" for r in turn.responses)
    return f"{IM_START}user{blocks}{IM_END}\n{_NEXT_ASSISTANT}"


def render_completion(turns: Sequence[Turn]) -> str:
    """Everything after the generation prompt ``<|im_start|>assistant\\n``."""
    out: list[str] = []
    for turn in turns:
        if isinstance(turn, AssistantTurn):
            out.append(render_turn(turn) + f"{IM_END}\n")
        else:
            out.append(render_tool_turn(turn))
    return "".join(out)


_TOOL_TURN = re.compile(
    rf"{re.escape(IM_START)}user((?:\n<tool_response>\n.*?\n</tool_response>)+)"
    rf"{re.escape(IM_END)}\n(?:{re.escape(_NEXT_ASSISTANT)})?",
    flags=re.DOTALL,
)
_RESPONSE = re.compile(r"\n<tool_response>\n(.*?)\n</tool_response>", flags=re.DOTALL)


def parse_completion(text: str) -> list[Turn] | GrammarError:
    """Parse a multi-turn completion; the calls of assistant turn ``a`` and their responses get
    the ids ``call_<a>_<k>``, as the agent loop and the rollout assign them."""
    turns: list[Turn] = []
    pos = 0
    while pos < len(text):
        end = text.find(IM_END, pos)
        if end < 0:
            end = len(text)
        parsed = parse_turn(text[pos:end])
        if isinstance(parsed, GrammarError):
            return GrammarError(parsed.rule, pos + parsed.position, parsed.message)
        a = sum(isinstance(t, AssistantTurn) for t in turns)
        calls = tuple(
            ToolCallItem(c.name, c.arguments, id=f"call_{a}_{k}")
            for k, c in enumerate(parsed.tool_calls)
        )
        turns.append(AssistantTurn(parsed.think, calls, parsed.answer))
        pos = min(len(text), end + len(IM_END) + 1)
        match = _TOOL_TURN.match(text, pos)
        if match is None:
            if pos < len(text):
                return GrammarError("trailing_text", pos, RULES["trailing_text"])
            break
        responses = tuple(
            ToolResponse(f"call_{a}_{k}", c) for k, c in enumerate(_RESPONSE.findall(match[1]))
        )
        turns.append(ToolTurn(responses))
        pos = match.end()
    return turns
