"""BM25 search over a passage corpus: the real backend behind a ``search`` tool.

Uses ``bm25s`` (sparse-matrix BM25, the index is built once at construction) with its own
tokenizer, English stopwords and, by default, the Snowball English stemmer from PyStemmer.
On the HotpotQA train questions over their corpus plus 2WikiMultiHopQA's, stemming lifts
"a supporting passage in the top 5" from 97 to 100 of 100 questions (it costs a little on
MuSiQue, so it stays a constructor option).

Corpus files are JSON or JSONL in the shapes of ``shared/data/context``: a list of
``{"title", "text"}``, a ``{title: [sentences]}`` object, or JSONL of ``{"title", "text"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s  # type: ignore[import-untyped]
import Stemmer  # type: ignore[import-not-found]

from toolsim.tools.base import LiveTool, ToolConfigurationError, function_definition, object_schema

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
MAX_TOP_K = 20
INLINE_MAX_PASSAGES = 50_000
"""Below this size a query takes well under a millisecond, cheaper than a thread hop."""


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


def search_interface() -> tuple[dict[str, Any], dict[str, Any]]:
    """The definition and output schema (no instance needed: the ToolMaker merges them)."""
    definition = function_definition(
        "search",
        "Search a Wikipedia passage collection by keywords and return the best passages.",
        {
            "query": {"type": "string", "description": "Keywords or a question."},
            "top_k": {
                "type": ["integer", "null"],
                "description": f"How many passages (default {DEFAULT_TOP_K}, at most {MAX_TOP_K}).",
            },
        },
    )
    output_schema = object_schema(
        {
            "results": {
                "type": "array",
                "maxItems": MAX_TOP_K,
                "items": object_schema(
                    {
                        "title": {"type": "string"},
                        "text": {"type": "string"},
                        "score": {"type": "number"},
                    }
                ),
            }
        }
    )
    return definition, output_schema


class BM25Search(LiveTool):
    """``{"query", "top_k"}`` → ``{"results": [{"title", "text", "score"}]}``."""

    name = "search"

    def __init__(
        self,
        corpus: Iterable[Path],
        *,
        stemmer: str | None = "english",
        inline_max_passages: int = INLINE_MAX_PASSAGES,
    ) -> None:
        paths = list(corpus)
        if not paths:
            raise ToolConfigurationError("the search tool needs at least one corpus file")
        self.passages = [p for path in paths for p in load_passages(path)]
        if not self.passages:
            raise ToolConfigurationError(f"no passages in {[str(p) for p in paths]}")
        self._inline = len(self.passages) <= inline_max_passages
        started = time.perf_counter()
        self._tokenizer = bm25s.tokenization.Tokenizer(
            stopwords="en", stemmer=Stemmer.Stemmer(stemmer) if stemmer else None
        )
        tokens = self._tokenizer.tokenize(
            [f"{p.title}\n{p.text}" for p in self.passages],
            return_as="tuple",
            show_progress=False,
        )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)
        self.build_seconds = time.perf_counter() - started
        log.info("bm25 index: %d passages in %.2fs", len(self.passages), self.build_seconds)
        self.definition, self.output_schema = search_interface()

    async def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        query = str(arguments.get("query") or "")
        top_k = arguments.get("top_k")
        k = DEFAULT_TOP_K if top_k is None else max(1, min(int(top_k), MAX_TOP_K))
        # Tokenizing touches the tokenizer's caches, so it stays on the event loop's thread.
        ids = self._tokenizer.tokenize([query], update_vocab=False, show_progress=False)
        if self._inline:
            hits = self._retrieve(ids, k)
        else:
            hits = await asyncio.to_thread(self._retrieve, ids, k)
        return {"results": hits}

    def search(self, query: str, top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
        """Synchronous search, for benchmarks and scripts."""
        ids = self._tokenizer.tokenize([query], update_vocab=False, show_progress=False)
        return self._retrieve(ids, max(1, min(top_k, MAX_TOP_K)))

    def _retrieve(self, ids: Any, k: int) -> list[dict[str, Any]]:
        docs, scores = self._index.retrieve(
            ids, k=min(k, len(self.passages)), show_progress=False, n_threads=1
        )
        hits = []
        for doc, score in zip(docs[0].tolist(), scores[0].tolist(), strict=True):
            if score <= 0:  # only stopwords or unknown words matched: nothing relevant
                continue
            passage = self.passages[doc]
            hits.append({"title": passage.title, "text": passage.text, "score": float(score)})
        return hits


def load_passages(path: Path) -> list[Passage]:
    """Read one corpus file; raises ``ToolConfigurationError`` naming the file and problem."""
    try:
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            records: Any = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            records = json.loads(raw)
        return list(_passages(records))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ToolConfigurationError(f"cannot load corpus {path}: {exc}") from exc


def _passages(records: Any) -> Iterator[Passage]:
    if isinstance(records, dict):  # HotpotQA: {title: [sentence, ...]}
        for title, sentences in records.items():
            text = sentences if isinstance(sentences, str) else "".join(sentences)
            yield Passage(str(title), text.strip())
        return
    if not isinstance(records, list):
        raise TypeError("expected a list of {title, text} or a {title: [sentences]} object")
    for record in records:
        if not isinstance(record, dict):
            raise TypeError(f"expected {{title, text}} objects, got {type(record).__name__}")
        text = record["text"]
        if isinstance(text, list):
            text = "".join(text)
        yield Passage(str(record.get("title") or ""), str(text).strip())
