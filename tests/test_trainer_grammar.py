"""The trace grammar: each rule, render/parse round trips (hypothesis), messages both ways,
and agreement with the Qwen2.5 template the tokenizer renders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolsim_trainer.grammar import (
    RULES,
    AssistantTurn,
    GrammarError,
    MessagesError,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    Trace,
    extract_answer,
    messages_to_trace,
    parse_completion,
    parse_turn,
    render_completion,
    render_turn,
    trace_to_messages,
)

# Free text that holds no grammar tag and no ChatML marker.
_TAGLESS = st.text(
    alphabet=st.characters(blacklist_characters="<>|", blacklist_categories=("Cs",)),
    max_size=40,
)
_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
# Argument text may hold quotes, backslashes and newlines, but no ``<``: a grammar tag inside
# a call (``{"<answer>": null}``) is refused by design (``nested_tag``), so such a trace never
# round-trips; ``test_a_tag_inside_tool_call_arguments_is_refused`` checks that refusal.
_ARG_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=12
)
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | _ARG_TEXT
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_ARG_TEXT.map(lambda t: t[:6]), inner, max_size=3)
    ),
    max_leaves=8,
)
_ARGS = st.dictionaries(_ARG_TEXT.map(lambda t: t[:8]), _JSON, max_size=3)


@st.composite
def assistant_turns(draw: st.DrawFn, *, final: bool | None = None) -> AssistantTurn:
    think = draw(_TAGLESS)
    is_final = draw(st.booleans()) if final is None else final
    if is_final:
        answer = draw(_TAGLESS.filter(lambda s: s.strip() != ""))
        return AssistantTurn(think, answer=answer)
    calls = draw(st.lists(st.builds(ToolCallItem, _NAMES, _ARGS), min_size=1, max_size=3))
    return AssistantTurn(think, tuple(calls))


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    """Alternating call turns and their tool turns, ending with an answer; ids as assigned."""
    trace = Trace(question=draw(st.text(min_size=1, max_size=30)))
    for a in range(draw(st.integers(0, 3))):
        turn = draw(assistant_turns(final=False))
        calls = tuple(
            ToolCallItem(c.name, c.arguments, id=f"call_{a}_{k}")
            for k, c in enumerate(turn.tool_calls)
        )
        trace.turns.append(AssistantTurn(turn.think, calls))
        contents = draw(st.lists(_TAGLESS, min_size=len(calls), max_size=len(calls)))
        trace.turns.append(
            ToolTurn(tuple(ToolResponse(c.id, x) for c, x in zip(calls, contents, strict=True)))
        )
    trace.turns.append(draw(assistant_turns(final=True)))
    return trace


@given(assistant_turns())
def test_render_then_parse_is_identity(turn: AssistantTurn) -> None:
    assert parse_turn(render_turn(turn)) == turn
    assert parse_turn(render_turn(turn) + "<|im_end|>") == turn


@given(traces())
def test_completion_round_trips(trace: Trace) -> None:
    assert parse_completion(render_completion(trace.turns)) == trace.turns


@given(traces(), st.sampled_from(["object", "string"]))
def test_messages_round_trip(trace: Trace, arguments: Any) -> None:
    messages = trace_to_messages(trace, arguments=arguments)
    assert messages_to_trace(messages) == trace
    calls = [c for m in messages for c in m.get("tool_calls", [])]
    for call in calls:
        args = call["function"]["arguments"]
        assert isinstance(args, dict if arguments == "object" else str)


@settings(max_examples=25, deadline=None)
@given(traces())
def test_rendering_matches_the_qwen25_template(trace: Trace) -> None:
    """What the policy must write is exactly what SFT trains on (TRL's template)."""
    tokenizer = _tokenizer()
    messages = trace_to_messages(trace)
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt)
    assert full[len(prompt) :] == render_completion(trace.turns)


_TOKENIZER: list[Any] = []


def _tokenizer() -> Any:
    if not _TOKENIZER:
        from tests.conftest import packaged_model_dir
        from toolsim_trainer.chat_template import load_tokenizer

        _TOKENIZER.append(load_tokenizer(packaged_model_dir()))
    return _TOKENIZER[0]


CALL = '\n<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call>'


CASES = [
    ("", "empty_turn", 0),
    ("   \n", "empty_turn", 0),
    ("I think <answer>x</answer>", "missing_think", 0),
    ("<think>never closed", "unclosed_think", 0),
    ("<think>a <answer>b</answer></think><answer>c</answer>", "nested_tag", 9),
    (
        "<think>a</think><answer>b</answer>\n<tool_response>\nx\n</tool_response>",
        "invented_tool_response",
        35,
    ),
    ("<think>a</think> so the answer is b", "missing_action", 17),
    ("<think>a</think>\n<tool_call>\n{}", "unclosed_tool_call", 17),
    ("<think>a</think>\n<tool_call>\n{name: 1}\n</tool_call>", "bad_tool_call_json", 30),
    ('<think>a</think>\n<tool_call>\n{"name": "s"}\n</tool_call>', "tool_call_shape", 28),
    (
        '<think>a</think>\n<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
        "tool_call_shape",
        28,
    ),
    ('<think>a</think>\n<tool_call>\n["s", {}]\n</tool_call>', "tool_call_shape", 28),
    ("<think>a</think><answer>never closed", "unclosed_answer", 16),
    ("<think>a</think><answer>  </answer>", "empty_answer", 16),
    ("<think>a</think><answer>b</answer>" + CALL, "mixed_actions", 35),
    ("<think>a</think>" + CALL + "\n<answer>b</answer>", "mixed_actions", 90),
    ("<think>a</think><answer>b</answer> and more", "trailing_text", 35),
    ("<think>a</think>" + CALL + " ok", "trailing_text", 90),
]


@pytest.mark.parametrize(("text", "rule", "position"), CASES)
def test_each_rule_names_where_it_broke(text: str, rule: str, position: int) -> None:
    error = parse_turn(text)
    assert isinstance(error, GrammarError), error
    assert (error.rule, error.position) == (rule, position)
    assert error.message.startswith(RULES[rule])


def test_every_rule_is_exercised() -> None:
    """The table above covers the whole documented rule set."""
    assert {rule for _, rule, _ in CASES} == set(RULES)


def test_several_calls_in_one_turn() -> None:
    text = "<think>two things</think>" + CALL + CALL.replace('"x"', '"y"')
    turn = parse_turn(text)
    assert isinstance(turn, AssistantTurn)
    assert [c.arguments["query"] for c in turn.tool_calls] == ["x", "y"]


def test_extract_answer_is_lenient() -> None:
    assert extract_answer("no think <answer> Paris </answer>") == "Paris"
    assert extract_answer("<answer>a</answer> then <answer>b</answer>") == "b"
    assert extract_answer("nothing here") is None


def test_completion_errors_point_into_the_whole_text() -> None:
    good = render_completion([AssistantTurn("t", (ToolCallItem("s", {}),))])
    text = good + "<|im_start|>user\n<tool_response>\nobs\n</tool_response><|im_end|>\n"
    text += "<|im_start|>assistant\n<think>x</think> oops"
    error = parse_completion(text)
    assert isinstance(error, GrammarError)
    assert error.rule == "missing_action"
    assert text[error.position :] == "oops"


def test_bad_messages_name_the_index() -> None:
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    with pytest.raises(MessagesError, match=r"messages\[2\]"):
        messages_to_trace([*base, {"role": "assistant", "content": "no think"}])
    with pytest.raises(MessagesError, match=r"messages\[2\].*not JSON"):
        bad_call = {"id": "c", "function": {"name": "s", "arguments": "{oops"}}
        messages_to_trace(
            [*base, {"role": "assistant", "content": "<think>t</think>", "tool_calls": [bad_call]}]
        )
    with pytest.raises(MessagesError, match="system"):
        messages_to_trace(base[1:])


def test_non_ascii_arguments_render_as_the_template_does() -> None:
    turn = AssistantTurn("t", (ToolCallItem("search", {"query": "Jędrzejewiczowa"}),))
    assert "Jędrzejewiczowa" in render_turn(turn)
    assert json.loads(render_turn(turn).split("\n")[2])["arguments"]["query"] == "Jędrzejewiczowa"


def test_a_tag_inside_tool_call_arguments_is_refused() -> None:
    """What the round-trip strategy leaves out: a grammar tag inside a call's JSON."""
    text = render_turn(AssistantTurn("t", (ToolCallItem("search", {"<answer>": None}),)))
    refused = parse_turn(text)
    assert isinstance(refused, GrammarError) and refused.rule == "nested_tag"
