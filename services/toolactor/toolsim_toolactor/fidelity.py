"""Grounded observations that carry the facts, and the usefulness curriculum.

In a grounded episode some calls should return evidence: a retrieval-like tool (the toolset's
``retrieval`` flag, else its name and argument names) called with arguments that share a word
with the grounding. Each such call gets a *role*, drawn from the episode seed and the call:
``useful`` with probability ``grounding.usefulness`` (the observation must carry the gold
answer), else ``uninformative`` (plausible, related, and the answer absent). The draw is a
threshold on a fixed number per call, so a call useful at usefulness 0.25 is useful at every
higher level, and the share of useful calls follows the level exactly up to sampling noise.

The role shapes three things, all here (``plan_evidence``): the excerpts the prompt shows
(``evidence_passages``: the sentences that name the answer, short, for a useful call; the
passages without them for an uninformative one), the schema the decoder is held to
(``copy_schema``: the excerpts fixed word for word in the tool's result slot, since a 135M
model does not copy from its prompt; else ``generation_schema``: fewer, shorter items), and
the ``fidelity`` gate the result must pass (``fidelity_gate``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from referencing.exceptions import Unresolvable

from toolsim import schemas
from toolsim.answers import answer_in_text, f1_score, is_yes_no, normalize_answer
from toolsim.toolsets import Tool
from toolsim_toolactor.checks import CheckInput, Gate
from toolsim_toolactor.seeded import unit_draw

Role = Literal["useful", "uninformative"]

FIDELITY = "fidelity"
MAX_EVIDENCE_ITEMS = 2
"""Most items an evidence array holds: each costs tokens, and one good item carries the fact."""
SNIPPET_CHARS = 160
"""Longest passage excerpt shown to the simulator (and longest string it may write)."""
FACTS_MEMO_SIZE = 1024


def _words(text: str) -> list[str]:
    return text.split()


RETRIEVAL_WORDS = frozenset(
    _words(
        "search retrieve retrieval lookup wiki wikipedia find fetch browse read page article "
        "articles document documents docs knowledge encyclopedia passage passages web google bing "
        "news kb query"
    )
)
"""Words in a tool's name that make it retrieval-like when the toolset does not say."""
COMPUTE_WORDS = frozenset(_words("calculator calculate compute math python code execute run"))
"""Words in a tool's name that make it a computation, never evidence."""
TEXT_KEYS = _words(
    "text snippet content summary body passage abstract extract excerpt description result results"
)
"""Field names, in order of preference, that hold a result's prose (where excerpts go)."""
TITLE_KEYS = _words("title name heading source page")
QUERY_KEYS = frozenset(
    _words("query q search question keywords keyword topic title entity term terms subject")
)
"""Argument names that make a tool retrieval-like when its name does not."""
STOPWORDS = frozenset(
    _words(
        "a an the of in on at to for from by with and or is are was were be been what which who "
        "whom whose when where why how did does do that this these those it its as than then"
    )
)
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_STATED_ANSWER = re.compile(r"\banswer\s*(?:is|was|:)\s*([^.;\n]{1,80})", re.IGNORECASE)
_ANSWER_KEY = re.compile(r"(^|_)answer$")


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass(frozen=True)
class Facts:
    """A grounding, prepared once per episode for the per-call decisions."""

    question: str
    golds: tuple[str, ...]
    passages: tuple[Passage, ...]
    words: frozenset[str]
    """Content words of question, answers and passages (the relevance test)."""

    @property
    def checkable(self) -> bool:
        """Whether the answer can be looked for in text (not yes/no, not missing)."""
        return bool(self.golds) and not is_yes_no(self.golds)


_facts_memo: OrderedDict[str, Facts] = OrderedDict()


def facts_of(grounding: dict[str, Any], key: str) -> Facts:
    """The prepared facts of ``grounding``, remembered by ``key``: the digest of the facts
    (``usefulness`` is not one of them: it is read from the grounding per call)."""
    facts = _facts_memo.get(key)
    if facts is None:
        facts = _prepare(grounding)
        _facts_memo[key] = facts
        if len(_facts_memo) > FACTS_MEMO_SIZE:
            _facts_memo.popitem(last=False)
    return facts


def _prepare(grounding: dict[str, Any]) -> Facts:
    golds = [grounding.get("answer") or "", *grounding.get("aliases", [])]
    passages = tuple(
        Passage(str(p.get("title", "")), str(p["text"])) for p in grounding.get("passages", [])
    )
    question = str(grounding.get("question") or "")
    texts = [question, *golds, *(f"{p.title} {p.text}" for p in passages)]
    return Facts(
        question=question,
        golds=tuple(g for g in dict.fromkeys(golds) if normalize_answer(g)),
        passages=passages,
        words=frozenset(w for t in texts for w in content_words(t)),
    )


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


# -- which calls carry evidence -----------------------------------------------------------


def is_retrieval_tool(tool: Tool) -> bool:
    """The toolset's word if it gave one, else the tool's name, else its argument names."""
    if tool.retrieval is not None:
        return tool.retrieval
    words = set(re.split(r"[^a-z0-9]+", tool.name.lower()))
    if words & COMPUTE_WORDS:
        return False
    if words & RETRIEVAL_WORDS:
        return True
    return bool(set(tool.parameters.get("properties", {})) & QUERY_KEYS)


def evidence_role(
    tool: Tool, arguments: dict[str, Any], facts: Facts, usefulness: float, seed: int
) -> Role | None:
    """The call's role, or None when its observation need not carry evidence."""
    if not is_retrieval_tool(tool) or not _relevant(arguments, facts):
        return None
    draw = unit_draw("usefulness", seed, tool.name, arguments)
    return "useful" if draw < usefulness else "uninformative"


def _relevant(arguments: dict[str, Any], facts: Facts) -> bool:
    """Whether the arguments name anything of the grounding (no text at all: assume so)."""
    words = content_words(" ".join(_strings(arguments)))
    return not words or bool(words & facts.words)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# -- the facts the prompt shows -----------------------------------------------------------


def evidence_passages(facts: Facts, role: Role, limit: int = SNIPPET_CHARS) -> list[Passage]:
    """Short excerpts, at most ``limit`` characters each: what a useful call copies (the
    sentences that name the answer; for a yes/no question, every passage's start), or what
    an uninformative one may say (the passages without any sentence or title naming it)."""
    if role == "useful":
        return _useful_passages(facts, limit)
    return _uninformative_passages(facts, limit)


def _useful_passages(facts: Facts, limit: int) -> list[Passage]:
    if not facts.checkable:
        return [Passage(p.title, _lead(p.text, limit)) for p in facts.passages][:MAX_EVIDENCE_ITEMS]
    found = []
    for passage in facts.passages:
        snippet = _answer_window(passage.text, facts.golds, limit)
        if snippet is not None:
            found.append(Passage(passage.title, snippet))
    return found[:MAX_EVIDENCE_ITEMS]


def _uninformative_passages(facts: Facts, limit: int) -> list[Passage]:
    if not facts.checkable:
        return []  # every supporting passage is evidence for a yes/no comparison
    kept = []
    for passage in facts.passages:
        if answer_in_text(facts.golds, passage.title):
            continue
        sentences = [s for s in _sentences(passage.text) if not answer_in_text(facts.golds, s)]
        text = _lead(" ".join(sentences), limit)
        if text and not answer_in_text(facts.golds, text):
            kept.append(Passage(passage.title, text))
    return kept[:MAX_EVIDENCE_ITEMS]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _lead(text: str, limit: int) -> str:
    """The start of ``text``, cut at a word boundary."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def _answer_window(text: str, golds: Sequence[str], limit: int) -> str | None:
    """The first sentence that names the answer, cut around the answer to ``limit``."""
    for sentence in _sentences(text):
        if not answer_in_text(golds, sentence):
            continue
        if len(sentence) <= limit:
            return sentence
        at = min((i for g in golds if (i := sentence.lower().find(g.lower())) >= 0), default=0)
        start = max(0, at - limit // 3)
        if start:
            start = sentence.find(" ", start) + 1
        window = _lead(sentence[start:], limit)
        return window if answer_in_text(golds, window) else None
    return None


# -- the schema the decoder follows -------------------------------------------------------


@dataclass(frozen=True)
class CopySlot:
    """Where excerpts go in an observation: a top-level array whose items have a text field
    (``{"results": [{"title", "text"}]}``), or a top-level text field (``{"result"}``)."""

    field: str
    text_key: str | None
    """The items' text field (None: ``field`` itself is the text)."""
    title_key: str | None
    max_chars: int
    items: tuple[int, int] = (1, 1)
    """The array's own (minItems, maxItems)."""


def copy_slot(schema: dict[str, Any]) -> CopySlot | None:
    """The slot excerpts can be copied into, or None when the schema has no recognisable one."""
    properties = schema.get("properties") if schema.get("type") == "object" else None
    if not isinstance(properties, dict):
        return None
    for name, sub in properties.items():
        if not isinstance(sub, dict) or sub.get("type") != "array":
            continue
        item = sub.get("items")
        if not isinstance(item, dict) or item.get("type") != "object":
            continue
        fields = item.get("properties")
        if not isinstance(fields, dict):
            continue
        text_key = _first_free_string(fields, TEXT_KEYS)
        if text_key is None:
            continue
        high = sub.get("maxItems")
        return CopySlot(
            field=name,
            text_key=text_key,
            title_key=_first_free_string(fields, TITLE_KEYS),
            max_chars=_room(fields[text_key]),
            items=(int(sub.get("minItems", 0)), int(high) if high is not None else 1 << 30),
        )
    text_key = _first_free_string(properties, TEXT_KEYS)
    if text_key is None:
        return None
    return CopySlot(text_key, None, None, _room(properties[text_key]))


def _first_free_string(fields: dict[str, Any], names: Sequence[str]) -> str | None:
    lowered = {str(k).lower(): k for k in fields}
    for name in names:
        key = lowered.get(name)
        if key is not None and _free_string(fields[key]):
            return str(key)
    return None


def _free_string(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    types = node.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    return "string" in kinds and not {"enum", "const", "pattern", "format"} & set(node)


def _room(node: dict[str, Any]) -> int:
    high = node.get("maxLength")
    return SNIPPET_CHARS if high is None else min(int(high), SNIPPET_CHARS)


def copy_schema(
    schema: dict[str, Any], slot: CopySlot, passages: Sequence[Passage]
) -> dict[str, Any] | None:
    """``schema`` with the slot fixed to ``passages``, in order (copy spans): the decoder can
    only write them out, word for word, and writes the tool's other fields freely. None when
    the excerpts do not fit the tool's own bounds."""
    if not passages:
        return None
    properties = dict(schema["properties"])
    if slot.text_key is None:
        joined = "\n".join(f"{p.title}: {p.text}" if p.title else p.text for p in passages)
        if len(joined) > slot.max_chars or not _fits(properties[slot.field], joined):
            return None
        properties[slot.field] = {"const": joined}
    else:
        low, high = slot.items
        chosen = list(passages)[:high]
        if len(chosen) < low:
            return None
        item = schema["properties"][slot.field]["items"]
        branches = [_fixed_item(item, slot, p) for p in chosen]
        if any(b is None for b in branches):
            return None
        array = {k: v for k, v in schema["properties"][slot.field].items() if k != "items"}
        array |= {
            "prefixItems": branches,
            "items": False,
            "minItems": len(chosen),
            "maxItems": len(chosen),
        }
        properties[slot.field] = array
    fixed = dict(_tighten(schema, 1, depth=0))
    fixed["properties"] = {
        k: (properties[k] if k == slot.field else v) for k, v in fixed["properties"].items()
    }
    fixed["required"] = list(dict.fromkeys([*schema.get("required", []), slot.field]))
    return fixed


def _fixed_item(item: dict[str, Any], slot: CopySlot, passage: Passage) -> dict[str, Any] | None:
    assert slot.text_key is not None
    fields = dict(_tighten(item, 1, depth=2)["properties"])
    if not _fits(item["properties"][slot.text_key], passage.text):
        return None
    fields[slot.text_key] = {"const": passage.text}
    required = [*item.get("required", []), slot.text_key]
    if slot.title_key is not None and _fits(item["properties"][slot.title_key], passage.title):
        fields[slot.title_key] = {"const": passage.title}
        required.append(slot.title_key)
    # Closed: an excerpt is exactly its fields (xgrammar's strict mode writes no others anyway),
    # so a tool whose items are open (live search adds "score") still gets a fixed observation
    # that the simulator builds without decoding.
    required = list(dict.fromkeys(required))
    return {**item, "properties": fields, "required": required, "additionalProperties": False}


def _fits(node: dict[str, Any], text: str) -> bool:
    # the caller's schema: its patterns run on RE2 (passages are long), and a ref that only
    # resolves from the root means "cannot tell", so the slot is not filled
    try:
        return schemas.validator(node).is_valid(text)
    except Unresolvable:
        return False


def generation_schema(schema: dict[str, Any], items: int) -> dict[str, Any]:
    """``schema`` with tighter bounds for an evidence call the slot cannot take: top-level
    arrays hold 1..``items`` entries and free strings at most ``SNIPPET_CHARS`` characters.
    Every instance of the result is an instance of ``schema`` (bounds only shrink)."""
    tightened: dict[str, Any] = _tighten(schema, max(1, items), depth=0)
    return tightened


def _tighten(node: Any, items: int, depth: int) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), dict):
            child_depth = depth + 1 if key == "properties" else depth
            out[key] = {k: _tighten(v, items, child_depth) for k, v in node[key].items()}
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(node.get(key), list):
            out[key] = [_tighten(v, items, depth) for v in node[key]]
    if isinstance(node.get("items"), dict):
        out["items"] = _tighten(node["items"], items, depth + 1)
    types = node.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    if "array" in kinds:
        _bound(out, "minItems", "maxItems", items, floor=1 if depth <= 1 else 0)
    if _free_string(node):
        _bound(out, "minLength", "maxLength", SNIPPET_CHARS, floor=0)
    return out


def _bound(node: dict[str, Any], low_key: str, high_key: str, cap: int, *, floor: int) -> None:
    """Shrink ``[low, high]`` towards ``[floor, cap]`` without making it empty."""
    low, high = int(node.get(low_key, 0)), node.get(high_key)
    new_high = cap if high is None else min(int(high), cap)
    if new_high < low:  # the tool's own bounds do not fit the cap: keep them
        return
    node[high_key] = new_high
    if low < floor <= new_high:
        node[low_key] = floor


# -- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """How one evidence call is simulated: its role, what the prompt shows, the schema the
    decoder follows and the gate the result must pass."""

    role: Role
    facts: Facts
    passages: tuple[Passage, ...]
    schema: dict[str, Any]
    copied: bool
    """Whether ``schema`` fixes the excerpts (else it only tightens the tool's bounds)."""
    gate: Gate


def plan_evidence(tool: Tool, facts: Facts, role: Role) -> Evidence:
    slot = copy_slot(tool.output_schema)
    passages = evidence_passages(facts, role, slot.max_chars if slot else SNIPPET_CHARS)
    schema = copy_schema(tool.output_schema, slot, passages) if slot else None
    copied = schema is not None
    if schema is None:
        schema = generation_schema(tool.output_schema, max(1, len(passages)))
    return Evidence(role, facts, tuple(passages), schema, copied, fidelity_gate(facts, role))


# -- the gate -----------------------------------------------------------------------------


def fidelity_gate(facts: Facts, role: Role) -> Gate:
    """Useful: the answer present; uninformative: absent; both: no conflicting answer stated.
    A yes/no answer cannot be looked for in text, so only the conflict check applies."""
    conflict = partial(no_conflicting_answer, facts.golds)
    if not facts.checkable:
        return Gate(FIDELITY, (conflict,))
    presence = partial(answer_present if role == "useful" else answer_absent, facts.golds)
    return Gate(FIDELITY, (presence, conflict))


def answer_present(golds: Sequence[str], subject: CheckInput) -> str | None:
    return None if answer_in_text(golds, subject.text) else "answer_absent"


def answer_absent(golds: Sequence[str], subject: CheckInput) -> str | None:
    return "answer_present" if answer_in_text(golds, subject.text) else None


def no_conflicting_answer(golds: Sequence[str], subject: CheckInput) -> str | None:
    """An answer the observation states outright (an ``answer`` field, or "the answer is X")
    that shares no word with any gold answer. A false fact in plain prose is not caught here:
    that needs a reader (the plausibility gate's job)."""
    for stated in _stated_answers(subject.value):
        if _conflicts(stated, golds):
            return "conflicting_answer"
    return None


def _stated_answers(value: Any, key: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _stated_answers(v, str(k).lower())
    elif isinstance(value, list):
        for v in value:
            found += _stated_answers(v, key)
    elif isinstance(value, str):
        if _ANSWER_KEY.search(key):
            found.append(value)
        found += [m.group(1) for m in _STATED_ANSWER.finditer(value)]
    return found


def _conflicts(stated: str, golds: Sequence[str]) -> bool:
    said = normalize_answer(stated)
    if not said:
        return False
    if is_yes_no(golds):
        first = said.split()[0]
        return first in ("yes", "no") and all(first != normalize_answer(g) for g in golds)
    return not answer_in_text(golds, stated) and f1_score(stated, golds) == 0.0
