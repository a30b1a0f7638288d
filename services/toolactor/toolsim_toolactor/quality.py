"""The ``quality`` gate: is a schema-valid observation one a user would believe?

A small model under a JSON Schema always writes *valid* JSON, but valid is not believable: it
copies the schema's own descriptions back (``"What the tool returned, as the real tool would
phrase it."``), fills fields with punctuation (``", "``) or ``"Not Available"``, loops
(``"pending-pending-pending"``), or answers a call about Paris with weather from nowhere. An
agent trained on such observations learns to ignore its tools. Each rule below is a pure
function of the observation (``checks.Check``) that returns its reason, a metric label:

``no_substance``
    The observation carries nothing: no value at all (``{}``, empty arrays), a text value that
    is empty or made only of punctuation or spaces (``", "``), or more than half of its text
    values placeholders (``"N/A"``, ``"Not Available"``, ``"unknown"``, ``"string"``, ...).
``malformed_text``
    A text value that is a fragment of syntax rather than text: it starts with punctuation
    that cannot open a value (``", type: "``, ``",the ..."``) or with a JSON or code
    bracket (``"{def _default: 'NoneType'}"``), it holds dict/JSON syntax (``{'``, ``":``), or
    a snake_case identifier of words (``"wind_speed_miles/sec"``) that is not an argument's.
``copied_text``
    A text value copies what the simulator was shown rather than what the tool would say: four
    words in a row (two of them content words) from the tool's description, a description in
    its parameters or output schema, or the prompt's own text (``prompt_texts``: instructions
    and the worked example); a short value equal to one of those descriptions; or a value
    naming a snake_case field or the tool itself (``"temperature_c*9/5 + 32"``), or talking
    about the simulation (``"the tool returned"``, ``"in JSON format"``). Argument values are
    taken out first: restating the call is not copying.
``repeated_fragment``
    A fragment of three or more characters with letters in it, repeated three times or more in
    a row (``"pending-pending-pending"``, ``"New York New York New York"``) or twenty
    characters recurring three times in one value; one text value filling more than half of
    four or more (``"Lavadolid"`` as every name and address); two fields of one object with
    the same text (``"used_for"`` and ``"side_effects"`` both ``"furtherfinester"``, a capital
    equal to its country); or the same sentence-like text (two spaces or more) twice.
``ignores_arguments``
    The output schema asks for text about the call (a free string field named like one of the
    arguments, or a ``result``/``summary``/``message``/``description``/``text`` field holding
    six words or more) and no text or number of the observation mentions any argument value.
    An argument is mentioned when its whole value, one of its content words, or (for words of
    five letters or more) a word starting with its first five letters appears. Arguments
    limited by ``enum``/``const`` and booleans never count: there is nothing to restate.

An evidence call of a grounded episode meets ``fidelity`` instead (``Simulator.gates_for``):
its text is the grounding's own excerpts. A gate stops at its first failing rule, in the
order above. The rules are deliberately
conservative (a real API answer passes them); what they catch is the simulator's failure, so
a flagged observation is kept out of rewards and SFT data by the trainer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from toolsim.toolsets import Tool
from toolsim_toolactor.checks import CheckInput, Gate

QUALITY = "quality"
QUALITY_VERSION = "1"
"""Part of every cache key: an observation that passed older rules is not replayed as a pass."""

PLACEHOLDERS = frozenset(
    {
        "",
        "n/a",
        "na",
        "none",
        "null",
        "nil",
        "unknown",
        "not available",
        "not applicable",
        "not specified",
        "unspecified",
        "tbd",
        "todo",
        "string",
        "text",
        "value",
        "example",
        "sample",
        "lorem ipsum",
        "xxx",
        "...",
    }
)
"""Text values that say nothing (compared lower-cased, without surrounding punctuation)."""
TEXT_FIELDS = frozenset({"result", "summary", "message", "description", "text"})
"""Generic prose fields: a long value in one is text about the call."""
STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an the of in on at to for from by with and or is are was were be been it its as "
        "this that these those what which who when where how than then into out up down over",
    )
)
COPY_NGRAM = 4
MIN_ABOUT_WORDS = 6
PREFIX_CHARS = 5

_WORD = re.compile(r"[a-z0-9]+(?:['\u2019][a-z]+)?")
_ALNUM = re.compile(r"[^\W_]")
_IDENTIFIER = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_REPEAT = re.compile(r"([^\W_][\w ]{2,40}?)(?:[\W_]*\1){2,}", re.IGNORECASE)
_LOOP = re.compile(r"(.{4,80}?)\1{2,}", re.DOTALL)
LOOP_WINDOW = 20
"""A run of this many characters found three times in one value is a loop."""
_BAD_OPENERS = frozenset(",;:)]}>{[<|=")
_SYNTAX_MARKS = ("{'", "'}", '":', '{"', "=>", "</")
_SNAKE_WORDS = re.compile(r"(?<![\w])[a-z]{2,}(?:_[a-z]{2,})+(?![\w])")
_META_TALK = re.compile(
    r"\b(?:the|this|a) tool (?:returned|returns|would|will)\b|\bjson\b|"
    r"\bthe (?:observation|arguments)\b|\breal tool\b"
)
_EDGE_PUNCT = " \t\n.,;:!?-_'\"()[]{}*/\\|"


def quality_gate(prompt_texts: Sequence[str] = ()) -> Gate:
    """The gate every simulated call meets; ``prompt_texts`` are the fixed texts of the
    simulator prompt (instructions, worked example) an observation must not copy."""
    texts = tuple(prompt_texts)
    return Gate(
        QUALITY,
        (
            no_substance,
            malformed_text,
            partial(copied_text, texts),
            repeated_fragment,
            ignores_arguments,
        ),
    )


# -- the rules ----------------------------------------------------------------------------


def no_substance(subject: CheckInput) -> str | None:
    """Nothing at all, an empty or punctuation-only text, or mostly placeholder texts."""
    strings = [s for _, s in string_leaves(subject.value)]
    if not strings and not _has_scalar(subject.value):
        return "no_substance"
    if any(not _ALNUM.search(s) for s in strings):
        return "no_substance"
    empty = sum(1 for s in strings if is_placeholder(s))
    if strings and empty * 2 > len(strings):
        return "no_substance"
    return None


def malformed_text(subject: CheckInput) -> str | None:
    """A text value that is a piece of syntax: leading punctuation, brackets, dict syntax."""
    for _, text in string_leaves(subject.value):
        stripped = text.strip()
        if stripped[:1] in _BAD_OPENERS or any(mark in stripped for mark in _SYNTAX_MARKS):
            return "malformed_text"
        if _SNAKE_WORDS.search(_without_arguments(stripped.lower(), subject.arguments)):
            return "malformed_text"
    return None


def copied_text(prompt_texts: Sequence[str], subject: CheckInput) -> str | None:
    """A text value that copies the tool's descriptions, its schemas or the prompt."""
    sources = [subject.tool.description, *schema_texts(subject.tool), *prompt_texts]
    grams = set().union(*(_content_ngrams(_words(s)) for s in sources))
    whole = {" ".join(_words(s)) for s in sources if _words(s)}
    identifiers = _identifiers(subject.tool)
    for _, text in string_leaves(subject.value):
        lowered = text.lower()
        if identifiers & set(_IDENTIFIER.findall(lowered)):
            return "copied_text"
        words = _words(_without_arguments(lowered, subject.arguments))
        if _META_TALK.search(" ".join(words)):
            return "copied_text"
        if len(words) >= COPY_NGRAM and _content_ngrams(words) & grams:
            return "copied_text"
        if 2 <= len(words) < COPY_NGRAM and " ".join(words) in whole:
            return "copied_text"
    return None


def repeated_fragment(subject: CheckInput) -> str | None:
    """A fragment looping in one value, identical values everywhere, or prose said twice."""
    strings = [s.strip() for _, s in string_leaves(subject.value)]
    for text in strings:
        for match in (*_REPEAT.finditer(text), *_LOOP.finditer(text)):
            if sum(c.isalpha() for c in match.group(1)) >= 2:
                return "repeated_fragment"
        if _recurring_window(text):
            return "repeated_fragment"
    long = [s.lower() for s in strings if len(s) >= 3]
    if len(long) >= 3 and len(set(long)) == 1:
        return "repeated_fragment"
    if len(long) >= 4 and max(long.count(s) for s in long) * 2 > len(long):
        return "repeated_fragment"
    if _twin_fields(subject.value):
        return "repeated_fragment"
    prose = [s for s in long if s.count(" ") >= 2]
    if len(prose) != len(set(prose)):
        return "repeated_fragment"
    return None


def ignores_arguments(subject: CheckInput) -> str | None:
    """The schema asks for text about the call and nothing in the observation names it."""
    values = restatable_arguments(subject.tool, subject.arguments)
    if not values or not _asks_about(subject):
        return None
    text = subject.text.lower()
    tokens = set(_WORD.findall(text))
    if any(_mentioned(value, text, tokens) for value in values):
        return None
    return "ignores_arguments"


# -- helpers (public where a test or the benchmark reads them) ----------------------------


def string_leaves(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``(field name, text)`` for every string of the observation, depth first; a string in
    an array carries the array's field name."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from string_leaves(item, str(name))
    elif isinstance(value, list):
        for item in value:
            yield from string_leaves(item, key)


def is_placeholder(text: str) -> bool:
    return text.strip(_EDGE_PUNCT).lower() in PLACEHOLDERS


def schema_texts(tool: Tool) -> list[str]:
    """Every ``description`` and ``title`` in the tool's parameters and output schema."""
    out: list[str] = []
    _collect_texts(tool.parameters, out)
    _collect_texts(tool.output_schema, out)
    return out


def restatable_arguments(tool: Tool, arguments: dict[str, Any]) -> list[str]:
    """Argument values an observation could restate: free strings and numbers, as text."""
    properties = tool.parameters.get("properties", {})
    out: list[str] = []
    for name, value in arguments.items():
        spec = properties.get(name, {})
        if isinstance(spec, dict) and ("enum" in spec or "const" in spec):
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, str) and _ALNUM.search(value):
            out.append(value.lower().strip())
        elif isinstance(value, int | float):
            out.append(_number(value))
    return out


def _collect_texts(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("description", "title") and isinstance(item, str):
                out.append(item)
            elif key not in ("enum", "const", "default", "examples"):
                _collect_texts(item, out)
    elif isinstance(node, list):
        for item in node:
            _collect_texts(item, out)


def _identifiers(tool: Tool) -> set[str]:
    """snake_case names an observation has no business writing: fields and the tool."""
    names: set[str] = {tool.name.lower()}
    _collect_names(tool.parameters, names)
    _collect_names(tool.output_schema, names)
    return {n for n in names if _IDENTIFIER.fullmatch(n)}


def _collect_names(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, item in node.items():
            if key == "properties" and isinstance(item, dict):
                out.update(str(name).lower() for name in item)
            _collect_names(item, out)
    elif isinstance(node, list):
        for item in node:
            _collect_names(item, out)


def _asks_about(subject: CheckInput) -> bool:
    names = {n.lower() for n in subject.arguments}
    for key, text in string_leaves(subject.value):
        lowered = key.lower()
        if lowered in names and _is_free_string(subject.tool.output_schema, key):
            return True
        if lowered in TEXT_FIELDS and len(_words(text)) >= MIN_ABOUT_WORDS:
            return True
    return False


def _is_free_string(schema: Any, key: str) -> bool:
    """Whether some property ``key`` of the schema is a string without enum/const."""
    if isinstance(schema, dict):
        properties = schema.get("properties")
        if isinstance(properties, dict) and isinstance(properties.get(key), dict):
            spec = properties[key]
            kinds = spec.get("type")
            if (kinds == "string" or (isinstance(kinds, list) and "string" in kinds)) and not (
                "enum" in spec or "const" in spec
            ):
                return True
        return any(_is_free_string(item, key) for item in schema.values())
    if isinstance(schema, list):
        return any(_is_free_string(item, key) for item in schema)
    return False


def _mentioned(value: str, text: str, tokens: set[str]) -> bool:
    if value in text:
        return True
    for word in _WORD.findall(value):
        if word in STOPWORDS or len(word) < 2:
            continue
        if word in tokens:
            return True
        if len(word) >= PREFIX_CHARS and any(t.startswith(word[:PREFIX_CHARS]) for t in tokens):
            return True
    return False


def _without_arguments(text: str, arguments: dict[str, Any]) -> str:
    for value in arguments.values():
        if isinstance(value, str) and len(value) >= 2:
            text = text.replace(value.lower(), " ")
    return text


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _content_ngrams(words: list[str]) -> set[tuple[str, ...]]:
    grams = set()
    for i in range(len(words) - COPY_NGRAM + 1):
        gram = tuple(words[i : i + COPY_NGRAM])
        if sum(w not in STOPWORDS for w in gram) >= 2:
            grams.add(gram)
    return grams


def _twin_fields(value: Any) -> bool:
    """Whether one object holds the same text (four characters or more, letters in it) in
    two of its fields, at any depth."""
    if isinstance(value, list):
        return any(_twin_fields(item) for item in value)
    if not isinstance(value, dict):
        return False
    texts = [
        v.strip().lower()
        for v in value.values()
        if isinstance(v, str) and len(v.strip()) >= 4 and sum(c.isalpha() for c in v) >= 2
    ]
    if len(texts) != len(set(texts)):
        return True
    return any(_twin_fields(item) for item in value.values())


def _recurring_window(text: str) -> bool:
    """Whether some ``LOOP_WINDOW`` characters with two letters or more recur three times,
    apart from each other (a model going round in circles; dates and codes do not count)."""
    seen: dict[str, list[int]] = {}
    for i in range(len(text) - LOOP_WINDOW + 1):
        window = text[i : i + LOOP_WINDOW]
        if sum(c.isalpha() for c in window) < 2:
            continue
        starts = seen.setdefault(window, [])
        if not starts or i - starts[-1] >= LOOP_WINDOW:
            starts.append(i)
            if len(starts) >= 3:
                return True
    return False


def _has_scalar(value: Any) -> bool:
    if isinstance(value, bool | int | float):
        return True
    if isinstance(value, dict):
        return any(_has_scalar(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_scalar(v) for v in value)
    return False


def _number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
