"""BM25 search latency of the live ``search`` tool over the 6,119-passage 2WikiMultiHopQA corpus.

Measures the index build once, then every question of ``eval/2wiki_500.jsonl`` through the
tool's own ``call`` (tokenize + retrieve + result objects), one at a time, after a warm-up.
Prints build time, p50/p99/max per stemming setting; the last line is the headline.

    python bench/search_latency.py [--data ../shared/data] [--top-k 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from toolsim.tools.search import BM25Search

ROOT = Path(__file__).resolve().parent.parent


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(tool: BM25Search, questions: list[str], top_k: int) -> list[float]:
    for question in questions[:20]:  # warm-up: first-touch allocations, tokenizer caches
        await tool.call({"query": question, "top_k": top_k})
    latencies = []
    for question in questions:
        started = time.perf_counter()
        await tool.call({"query": question, "top_k": top_k})
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    corpus = args.data / "context" / "2wikimultihopqa_corpus.json"
    lines = (args.data / "eval" / "2wiki_500.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    headline = ""
    for stemmer in (None, "english"):
        tool = BM25Search([corpus], stemmer=stemmer)
        latencies = asyncio.run(measure(tool, questions, args.top_k))
        p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
        print(
            f"stemmer={stemmer or 'none':8s} passages={len(tool.passages)} "
            f"build={tool.build_seconds:.2f}s queries={len(latencies)} "
            f"p50={p50:.3f}ms p99={p99:.3f}ms max={max(latencies):.3f}ms "
            f"mean={statistics.fmean(latencies):.3f}ms"
        )
        headline = (
            f"HEADLINE bm25 search p50 {p50:.2f} ms p99 {p99:.2f} ms over "
            f"{len(tool.passages)} passages (stemmed, top {args.top_k}; "
            f"index build {tool.build_seconds:.2f} s)"
        )
    print(headline)


if __name__ == "__main__":
    main()
