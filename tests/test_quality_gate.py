"""The ``quality`` gate on crafted observations: each rule, each direction.

Every failing case is one the packaged model really wrote (issue 12 and ``bench/quality.py``);
every passing one is what a real API could answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from toolsim.toolsets import DEFAULT_OUTPUT_SCHEMA, Tool, build_toolset
from toolsim_toolactor.checks import check_input, judge
from toolsim_toolactor.prompt import PROMPT_TEXTS
from toolsim_toolactor.quality import (
    copied_text,
    ignores_arguments,
    malformed_text,
    no_substance,
    quality_gate,
    repeated_fragment,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
WEATHER_OUT = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature_c": {"type": "number", "description": "Temperature in degrees Celsius"},
        "conditions": {"type": "string", "description": "Sky and precipitation right now"},
    },
    "required": ["city", "temperature_c", "conditions"],
}
PARIS = {"city": "Paris"}


def tool(output_schema: dict[str, Any] | None = None, definition: Any = WEATHER) -> Tool:
    schemas = {"get_weather": output_schema} if output_schema is not None else {}
    return build_toolset([definition], schemas).tools["get_weather"]


def reason(value: Any, *, schema: dict[str, Any] | None = WEATHER_OUT, args: Any = PARIS) -> Any:
    """The gate's verdict on one observation: its reason, or None when it passes."""
    verdict = judge((quality_gate(PROMPT_TEXTS),), check_input(tool(schema), args, value))
    return verdict.failures.get("quality")


GOOD = {"city": "Paris", "temperature_c": 14.5, "conditions": "light rain"}


def test_a_believable_observation_passes_every_rule() -> None:
    assert reason(GOOD) is None
    subject = check_input(tool(WEATHER_OUT), PARIS, GOOD)
    for check in (no_substance, malformed_text, repeated_fragment, ignores_arguments):
        assert check(subject) is None
    assert copied_text(PROMPT_TEXTS, subject) is None


@pytest.mark.parametrize(
    "value",
    [
        {"result": ", "},  # the README example on the packaged model, before issue 12
        {"result": ""},
        {"results": []},
        {},
        {"city": "N/A", "conditions": "Not Available", "temperature_c": 3},
        {"a": "unknown", "b": "string", "c": "Paris"},
    ],
)
def test_no_substance_fails_empty_punctuation_and_placeholders(value: Any) -> None:
    assert reason(value, schema=None) == "no_substance"


@pytest.mark.parametrize(
    "value",
    [
        {"result": "Light rain, 14 C in Paris"},
        {"open": True},  # a boolean is an answer
        {"status": "unknown", "city": "Paris", "detail": "station offline"},  # one of three
    ],
)
def test_no_substance_passes_real_values(value: Any) -> None:
    assert no_substance(check_input(tool(), PARIS, value)) is None


@pytest.mark.parametrize(
    "text",
    [
        ", type: ",
        ",the tool returned a restaurant in Rome",
        "{def _default: 'NoneType'}",
        '{"a":1}',
    ],
)
def test_malformed_text_fails_fragments_of_syntax(text: str) -> None:
    assert reason({"result": text}, schema=None) == "malformed_text"


@pytest.mark.parametrize("text", ["(555) 010-2233", "\u20ac12.40", "'Casablanca' (1942)", "-3 C"])
def test_malformed_text_passes_ordinary_punctuation(text: str) -> None:
    assert malformed_text(check_input(tool(), PARIS, {"result": text})) is None


@pytest.mark.parametrize(
    ("value", "schema"),
    [
        # the old default schema's description, copied back (issue 12, seeds 2 and 3)
        (
            {"result": "What the tool returned, as the real tool would phrase it."},
            {
                "type": "object",
                "properties": {
                    "result": {
                        "type": "string",
                        "description": "What the tool returned, as the real tool would phrase it.",
                    }
                },
            },
        ),
        ({**GOOD, "conditions": "temperature_c*9/5 + 32"}, WEATHER_OUT),  # a field name
        ({**GOOD, "conditions": "Sky and precipitation right now"}, WEATHER_OUT),  # its description
        ({**GOOD, "conditions": "the current weather in a city of France"}, WEATHER_OUT),
        ({**GOOD, "conditions": "the tool returned rain"}, WEATHER_OUT),  # talk of the simulation
        (
            {**GOOD, "conditions": "High and low tide at a port"},
            WEATHER_OUT,
        ),  # the prompt's example
    ],
)
def test_copied_text_fails_what_the_simulator_was_shown(value: Any, schema: Any) -> None:
    assert reason(value, schema=schema) == "copied_text"


def test_copied_text_passes_restated_arguments_and_ordinary_words() -> None:
    value = {"city": "Paris", "temperature_c": 9, "conditions": "cloudy over Paris, weather mild"}
    assert copied_text(PROMPT_TEXTS, check_input(tool(WEATHER_OUT), PARIS, value)) is None
    long_city = {"city": "Current weather in a city"}  # an argument value is no copy
    restated = {"city": "Current weather in a city", "temperature_c": 1, "conditions": "dry"}
    assert copied_text(PROMPT_TEXTS, check_input(tool(WEATHER_OUT), long_city, restated)) is None


@pytest.mark.parametrize(
    "value",
    [
        {"account_status": "pending-pending-pending"},  # issue 12
        {"result": "New York New York New York"},
        {"result": "{'stock quote'}'s value is: " * 4},
        {"a": "Lavadolid", "b": "Lavadolid", "c": "Lavadolid", "d": "Montiellis"},
        {"drug": "metformin", "used_for": "furtherfinester", "side_effects": "furtherfinester"},
        {"a": "it rains in the north", "b": "it rains in the north"},
    ],
)
def test_repeated_fragment_fails_loops_and_copies_of_itself(value: Any) -> None:
    assert repeated_fragment(check_input(tool(), PARIS, value)) == "repeated_fragment"


@pytest.mark.parametrize(
    "value",
    [
        {"phone": "555-555-5555", "name": "Walla Walla Sweets"},  # digits; a name said twice
        {"headlines": [{"source": "BBC", "title": "A"}, {"source": "BBC", "title": "B"}]},
        {"from": "USD", "to": "USD"},  # too short to be a loop
        {"text": "Paris is in France. Paris is large. Paris is old."},
    ],
)
def test_repeated_fragment_passes_ordinary_repetition(value: Any) -> None:
    assert repeated_fragment(check_input(tool(), PARIS, value)) is None


def test_ignores_arguments_when_the_schema_asks_about_them() -> None:
    nowhere = {"city": "Lyon", "temperature_c": 11, "conditions": "sunny"}
    assert reason(nowhere) == "ignores_arguments"  # a field named city, and no Paris
    prose = {"result": "Sunny and warm all afternoon with a light breeze"}
    assert reason(prose, schema=None) == "ignores_arguments"  # six words about nothing asked


@pytest.mark.parametrize(
    ("value", "args"),
    [
        ({"city": "Paris", "temperature_c": 11, "conditions": "sunny"}, PARIS),
        ({"city": "PARIS (FR)", "temperature_c": 11, "conditions": "sunny"}, PARIS),
        ({"city": "Parisian suburbs", "temperature_c": 2, "conditions": "ice"}, PARIS),
        ({"result": "Sunny"}, PARIS),  # short: a real API may not restate the city
        ({"city": "Lyon", "temperature_c": 1, "conditions": "fog"}, {"unit": "celsius"}),  # enum
    ],
)
def test_ignores_arguments_passes_a_mention_or_nothing_to_restate(value: Any, args: Any) -> None:
    schema = DEFAULT_OUTPUT_SCHEMA if "result" in value else WEATHER_OUT
    assert ignores_arguments(check_input(tool(schema), args, value)) is None


def test_ignores_arguments_reads_numbers() -> None:
    convert = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Convert money.",
            "parameters": {"type": "object", "properties": {"amount": {"type": "number"}}},
        },
    }
    out = {"type": "object", "properties": {"amount": {"type": "string"}}}
    subject = check_input(tool(out, convert), {"amount": 100}, {"amount": "100.0 USD"})
    assert ignores_arguments(subject) is None
    subject = check_input(tool(out, convert), {"amount": 100}, {"amount": "twelve"})
    assert ignores_arguments(subject) == "ignores_arguments"


def test_the_gate_stops_at_the_first_failing_rule() -> None:
    assert reason({"result": ", "}, schema=None) == "no_substance"  # also malformed


def test_malformed_text_fails_identifiers_but_not_an_argument_that_is_one() -> None:
    value = {"city": "Paris", "temperature_c": 3, "conditions": "wind_speed_miles/sec"}
    assert reason(value) == "malformed_text"
    handle = {"city": "paris_north", "temperature_c": 3, "conditions": "dry at paris_north"}
    assert malformed_text(check_input(tool(WEATHER_OUT), {"city": "paris_north"}, handle)) is None
