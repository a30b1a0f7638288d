"""The in-process backend: the packaged model, run by transformers, constrained by xgrammar.

One worker thread owns the model. ``generate()`` prepares a request in the event loop's
executor (chat template, grammar compile through a bounded LRU), queues it, and awaits a
future. The worker does *continuous batching*: it keeps one running batch with a shared
KV cache, and at every step boundary it

1. samples one token for every row (grammar bitmask applied to constrained rows, greedy or
   seeded multinomial per row),
2. advances each row's ``GrammarMatcher`` and retires the rows that finished (grammar
   terminated, EOS, or ``max_tokens``), dropping them from the cache,
3. runs one forward pass of the survivors' new tokens,
4. admits waiting requests: prefills them together (left-padded) and merges their cache
   into the running one (left-padding whichever is shorter).

Rows are left-padded, so every row's next token sits in the last column; the 2-D attention
mask hides the padding and explicit ``position_ids`` keep RoPE positions per row.
Results travel back with ``loop.call_soon_threadsafe``. A request that fails (bad schema,
prompt too long, a matcher error) fails only its own future; a failing forward pass fails
the rows in that batch, and the worker carries on.

*Prefix caching* (``prefix_cache_bytes``, like vLLM's automatic prefix caching): a row's KV
is kept in blocks of 16 tokens (its prompt once prefilled, prompt plus completion when it
finishes), found by a hashed chain of blocks and evicted least recently used by bytes. An
admitted prompt reuses the KV of its longest cached prefix of whole blocks (never its last
token: its logits pick the first new token) and prefills only the rest. In the prefill a
row's reused KV is right-aligned in the group's prefix columns, its new tokens in the new
columns, padding between, positions counted over the mask: rows of one group may reuse
different lengths. So an evaluation's shared system prompt and each conversation's earlier
turns are prefilled once; rows of one group that share a prefix the cache lacks get it from
one extra prefill of that prefix. Reused KV differs from a fresh prefill's in the last bits
(other matrix shapes): in float32 first-step logits move by ~4e-5 and greedy outputs stay
the same (``bench/prefix_cache.py``); in bfloat16 they move by ~0.5, as much as batch
composition alone moves them without the cache, so a near-tie can flip.

``update_weights`` copies new weights in between two steps, in the worker thread, and
empties the prefix cache (its KV came from the old weights).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import xgrammar as xgr

from toolsim.errors import (
    BackendUnavailableError,
    GenerationFailedError,
    InvalidRequestError,
    ToolsimError,
)
from toolsim.llm.base import FinishReason, Generation, GenerationRequest, LLMBackend
from toolsim.llm.prefix_cache import (
    DEFAULT_PREFIX_CACHE_BYTES,
    SHARED_MIN,
    PrefixCache,
    shared_prefixes,
    stack_prefixes,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_GRAMMAR_CACHE_SIZE = 128


@dataclass
class EmbeddedStats:
    """Counters the worker keeps (read them for tests and metrics; the worker writes them)."""

    forward_passes: int = 0
    """Every model forward: prefills plus decode steps."""
    prefill_passes: int = 0
    """Admission groups: how many times waiting requests were prefilled together."""
    decode_steps: int = 0
    """Forward passes that advanced the running batch by one token."""
    max_batch_size: int = 0
    """The most rows ever decoded together in one forward pass (a running maximum: to see
    what some requests did, compare ``decode_steps_with`` before and after them)."""
    decode_steps_by_rows: dict[int, int] = field(default_factory=dict)
    """Decode steps by the number of rows they advanced together."""
    requests_completed: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    grammar_cache_hits: int = 0
    grammar_cache_misses: int = 0
    prefilled_tokens: int = 0
    """Tokens run through the model at admission (padding not counted): the prompts' tokens
    not found in the prefix cache, plus ``prefix_shared_tokens``."""
    prefill_padded_tokens: int = 0
    """Positions computed at admission, padding included (rows times the new width)."""
    prefill_seconds: float = 0.0
    """Wall time in prefill forward passes."""
    decode_seconds: float = 0.0
    """Wall time in decode forward passes."""
    prefix_lookups: int = 0
    """Admitted prompts looked up in the prefix cache (none while it is off)."""
    prefix_hit_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache instead of a prefill."""
    prefix_cache_bytes: int = 0
    """Bytes of KV the prefix cache holds now (a level, not a counter)."""
    prefix_evicted_blocks: int = 0
    """Prefix-cache blocks dropped to stay within ``prefix_cache_bytes``."""
    prefix_shared_passes: int = 0
    """Prefills of prefixes that several prompts of one admission group share, run once
    before the group (their tokens count in ``prefilled_tokens``)."""
    prefix_shared_tokens: int = 0
    """Tokens those passes prefilled."""
    weight_updates: int = 0
    """Completed ``update_weights`` calls."""

    def decode_steps_with(self, rows: int) -> int:
        """Decode steps that advanced at least ``rows`` rows together."""
        return sum(n for width, n in self.decode_steps_by_rows.items() if width >= rows)


@dataclass
class _Job:
    """A prepared request waiting for (or owned by) the worker."""

    request: GenerationRequest
    prompt_ids: list[int]
    grammar: xgr.CompiledGrammar | None
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Generation]
    cancelled: bool = False


@dataclass
class _Row:
    """One sequence of the running batch (worker thread only)."""

    job: _Job
    matcher: xgr.GrammarMatcher | None
    generator: torch.Generator | None
    temperature: float
    tokens: list[int] = field(default_factory=list)
    penalty: float = 0.0
    """Presence penalty: subtracted from the logits of the tokens in ``tokens``."""
    weights_version: int = 0
    """The engine's ``_weights_version`` at admission: a row that saw an update midway holds
    KV of two weights, which must not enter the prefix cache."""
    stop_token_id: int | None = None


@dataclass
class _Control:
    """Work for the worker between two steps (a weight update), with the future it settles."""

    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class EmbeddedBackend(LLMBackend):
    """Runs SmolLM2 in this process with xgrammar-constrained, continuously batched decoding."""

    def __init__(
        self,
        model_path: Path,
        *,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        num_threads: int | None = None,
        model_name: str = "smollm2",
        dtype: str = "auto",
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
    ) -> None:
        """``prefix_cache_bytes``: the most bytes of KV the prefix cache keeps (0: no prefix
        caching; every prompt is prefilled whole)."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if prefix_cache_bytes < 0:
            raise ValueError("prefix_cache_bytes must be 0 (off) or more")
        self.model_path = Path(model_path)
        self.max_batch_size = max_batch_size
        self.batch_wait_ms = batch_wait_ms
        self.num_threads = num_threads
        self.model_name = model_name
        self.dtype = resolve_dtype(dtype)
        self.prefix_cache_bytes = prefix_cache_bytes
        self.stats = EmbeddedStats()

        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._compiler: xgr.GrammarCompiler | None = None
        self._vocab_size = 0
        self._max_positions = 0
        self._stop_ids: frozenset[int] = frozenset()
        self._pad_id = 0
        self._nonstop_bits: torch.Tensor | None = None

        self._tokenizer_lock = threading.Lock()
        self._grammar_lock = threading.Lock()
        self._grammars: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()

        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._control: list[_Control] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loaded = threading.Event()
        self._start_lock = asyncio.Lock()

        # Running batch: touched by the worker thread only.
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._attn: torch.Tensor = torch.zeros(0, 0, dtype=torch.long)
        self._pos: torch.Tensor = torch.zeros(0, dtype=torch.long)
        self._logits: torch.Tensor = torch.zeros(0, 0)
        self._bitmask: torch.Tensor = torch.zeros(0, 0, dtype=torch.int32)
        self._prefix = PrefixCache(prefix_cache_bytes)
        self._weights_version = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the model and tokenizer in the worker thread; returns once it can serve."""
        async with self._start_lock:
            if self._thread is not None:
                if self._loaded.is_set():
                    return
                raise BackendUnavailableError("embedded backend failed to start")
            loop = asyncio.get_running_loop()
            started: asyncio.Future[None] = loop.create_future()
            self._closing = False
            self._thread = threading.Thread(
                target=self._worker_main,
                args=(loop, started),
                name="toolsim-embedded-llm",
                daemon=True,
            )
            self._thread.start()
            await started

    async def ready(self) -> bool:
        thread = self._thread
        return (
            self._loaded.is_set() and not self._closing and thread is not None and thread.is_alive()
        )

    async def aclose(self) -> None:
        """Stop the worker; requests still queued or running fail as unavailable."""
        thread = self._thread
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._thread = None
        self._loaded.clear()
        self._model = None
        self._cache = None

    # ------------------------------------------------------------------ requests

    async def generate(self, request: GenerationRequest) -> Generation:
        if not await self.ready():
            raise BackendUnavailableError("embedded backend is not started")
        prompt_ids, grammar, max_new = await asyncio.to_thread(self._prepare, request)
        loop = asyncio.get_running_loop()
        job = _Job(
            request=request,
            prompt_ids=prompt_ids,
            grammar=grammar,
            max_new_tokens=max_new,
            loop=loop,
            future=loop.create_future(),
        )

        def _on_done(fut: asyncio.Future[Generation]) -> None:
            if fut.cancelled():
                job.cancelled = True  # the worker drops the row at its next step

        job.future.add_done_callback(_on_done)
        with self._cond:
            if self._closing or self._thread is None:
                raise BackendUnavailableError("embedded backend is shutting down")
            self._pending.append(job)
            self._cond.notify()
        return await job.future

    async def update_weights(self, weights: Mapping[str, torch.Tensor]) -> int:
        """Copy ``weights`` into the model's parameters and buffers of the same names (those
        of ``model.state_dict()``, e.g. ``model.layers.0.self_attn.q_proj.weight``; tied
        names share one tensor), converting dtype and device; returns how many were copied.

        The copy happens in the worker thread between two decode steps (or while idle), so
        no forward pass sees half of it; the tensors must stay unchanged until this returns.
        Every name and shape is checked first: an unknown name or a shape mismatch raises
        ``ValueError`` naming the key and changes nothing (a value that is not a tensor:
        ``TypeError``). The prefix cache is then emptied. Requests in flight are not waited
        for: they may finish on either weights (their earlier tokens and KV from the old
        ones, the rest from the new), and their KV is never cached; requests admitted after
        the update run on the new weights only.
        """
        if not await self.ready():
            raise BackendUnavailableError("embedded backend is not started")
        loop = asyncio.get_running_loop()
        control = _Control(lambda: self._apply_weights(weights), loop, loop.create_future())
        with self._cond:
            if self._closing or self._thread is None:
                raise BackendUnavailableError("embedded backend is shutting down")
            self._control.append(control)
            self._cond.notify()
        return int(await control.future)

    def _prepare(
        self, request: GenerationRequest
    ) -> tuple[list[int], xgr.CompiledGrammar | None, int]:
        """Validate, apply the chat template and compile the grammar (executor thread)."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise BackendUnavailableError("embedded backend is not started")
        if request.prompt_ids is None and not request.messages:
            raise InvalidRequestError("messages must not be empty", param="messages")
        if request.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
        if request.temperature < 0:
            raise InvalidRequestError("temperature must not be negative", param="temperature")
        if request.choices is not None and not request.choices:
            raise InvalidRequestError("choices must not be empty", param="choices")
        prompt_ids = self._prompt_ids(tokenizer, request)
        room = self._max_positions - len(prompt_ids)
        if room < 1:
            raise InvalidRequestError(
                f"prompt is {len(prompt_ids)} tokens; the model holds {self._max_positions}",
                param="messages",
            )
        grammar: xgr.CompiledGrammar | None = None
        if request.choices is not None:
            grammar = self._compiled_choices(request.choices)
        elif request.json_schema is not None:
            grammar = self._compiled_schema(request.json_schema)
        return prompt_ids, grammar, min(request.max_tokens, room)

    def _prompt_ids(
        self, tokenizer: PreTrainedTokenizerBase, request: GenerationRequest
    ) -> list[int]:
        """The request's own token ids, or its messages through the tokenizer's template."""
        if request.prompt_ids is not None:
            ids = [int(t) for t in request.prompt_ids]
            if not ids:
                raise InvalidRequestError("prompt_ids must not be empty", param="prompt_ids")
            if min(ids) < 0 or max(ids) >= self._vocab_size:
                raise InvalidRequestError(
                    f"prompt_ids must lie in [0, {self._vocab_size}): is this the model's "
                    "tokenizer?",
                    param="prompt_ids",
                )
            return ids
        with self._tokenizer_lock:
            encoded = tokenizer.apply_chat_template(
                request.messages,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        return [int(t) for t in cast(list[int], encoded)]

    def _compiled_schema(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        # Key order is kept: xgrammar emits properties in schema order, so order matters.
        try:
            key = "schema:" + json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"json_schema is not JSON: {exc}", param="json_schema"
            ) from exc

        def compile_(compiler: xgr.GrammarCompiler) -> xgr.CompiledGrammar:
            return compiler.compile_json_schema(
                key.removeprefix("schema:"), any_whitespace=False, separators=(",", ":")
            )

        return self._cached_grammar(key, compile_, param="json_schema")

    def _compiled_choices(self, choices: list[str]) -> xgr.CompiledGrammar:
        key = "choices:" + json.dumps(choices, ensure_ascii=False)
        # A JSON string literal is a valid xgrammar EBNF string literal (same escapes).
        ebnf = "root ::= " + " | ".join(json.dumps(c) for c in choices)

        def compile_(compiler: xgr.GrammarCompiler) -> xgr.CompiledGrammar:
            return compiler.compile_grammar(ebnf)

        return self._cached_grammar(key, compile_, param="choices")

    def _cached_grammar(
        self,
        key: str,
        compile_: Callable[[xgr.GrammarCompiler], xgr.CompiledGrammar],
        *,
        param: str,
    ) -> xgr.CompiledGrammar:
        with self._grammar_lock:
            hit = self._grammars.get(key)
            if hit is not None:
                self._grammars.move_to_end(key)
                self.stats.grammar_cache_hits += 1
                return hit
        compiler = self._compiler
        if compiler is None:
            raise BackendUnavailableError("embedded backend is not started")
        try:
            compiled = compile_(compiler)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError on bad input
            raise InvalidRequestError(f"cannot compile {param}: {exc}", param=param) from exc
        with self._grammar_lock:
            self.stats.grammar_cache_misses += 1
            self._grammars[key] = compiled
            self._grammars.move_to_end(key)
            while len(self._grammars) > _GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        return compiled

    # ------------------------------------------------------------------ worker thread

    def _worker_main(self, loop: asyncio.AbstractEventLoop, started: asyncio.Future[None]) -> None:
        try:
            if self.num_threads is not None:
                torch.set_num_threads(self.num_threads)
            self._load()
        except Exception as exc:
            log.exception("embedded backend failed to load %s", self.model_path)
            err = BackendUnavailableError(f"cannot load model from {self.model_path}: {exc}")
            _deliver(loop, started, None, err)
            return
        self._loaded.set()
        _deliver(loop, started, None, None)
        try:
            with torch.inference_mode():
                self._serve()
        finally:
            self._loaded.clear()
            err = BackendUnavailableError("embedded backend stopped")
            for row in self._rows:
                self._fail(row.job, err)
            self._reset_batch()
            with self._cond:
                pending, self._pending = self._pending, []
                controls, self._control = self._control, []
            for job in pending:
                self._fail(job, err)
            for control in controls:
                _deliver(control.loop, control.future, None, err)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.model_path
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds no model (run `toolsim model fetch` first)")
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=self.dtype, local_files_only=True
        )
        model.train(False)  # inference mode for dropout/norm layers
        config = model.config
        vocab_size = int(config.vocab_size)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        stop = set(int(t) for t in info.stop_token_ids)
        eos = config.eos_token_id
        stop.update([eos] if isinstance(eos, int) else list(eos or []))
        if tokenizer.eos_token_id is not None:
            stop.add(int(tokenizer.eos_token_id))
        self._stop_ids = frozenset(stop)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else min(stop)
        self._vocab_size = vocab_size
        self._max_positions = int(getattr(config, "max_position_embeddings", 2048))
        # Bits set for every token that is NOT a stop token: a matcher whose bitmask has none
        # of them left can only stop, so its row is finished without another forward pass.
        nonstop = xgr.allocate_token_bitmask(1, vocab_size)
        for tok in stop:
            word, bit = divmod(tok, 32)
            value = int(nonstop[0, word]) & ~(1 << bit)
            nonstop[0, word] = value - (1 << 32) if value >= 1 << 31 else value
        self._nonstop_bits = nonstop[0]
        self._tokenizer = tokenizer
        self._model = model
        with torch.inference_mode():  # warm the kernels so the first request is not slow
            model(input_ids=torch.tensor([[self._pad_id] * 4]), use_cache=False)

    def _serve(self) -> None:
        while True:
            jobs = self._take_jobs()
            if jobs is None:
                return
            self._run_controls()
            if jobs:
                self._admit(jobs)
            if self._rows:
                self._step()

    def _take_jobs(self) -> list[_Job] | None:
        """Waiting jobs to admit (None: shut down). Blocks only while the batch is empty."""
        with self._cond:
            if self._closing:
                return None
            if not self._rows:
                while not self._pending and not self._control and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return None
                # Give concurrent callers a moment to join this batch.
                deadline = time.monotonic() + self.batch_wait_ms / 1000.0
                while 0 < len(self._pending) < self.max_batch_size and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            room = self.max_batch_size - len(self._rows)
            jobs, self._pending = self._pending[:room], self._pending[room:]
        return [job for job in jobs if not job.cancelled]

    def _run_controls(self) -> None:
        with self._cond:
            controls, self._control = self._control, []
        for control in controls:
            try:
                result = control.run()
            except Exception as exc:
                _deliver(control.loop, control.future, None, exc)
            else:
                _deliver(control.loop, control.future, result, None)

    def _apply_weights(self, weights: Mapping[str, torch.Tensor]) -> int:
        """``update_weights`` in the worker thread: check everything, then copy."""
        model = self._model
        assert model is not None
        targets = model.state_dict()
        for name, tensor in weights.items():
            target = targets.get(name)
            if target is None:
                raise ValueError(
                    f"unknown weight {name!r}: use the names of the model's state_dict(), "
                    f"such as {next(iter(targets))!r}"
                )
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"weight {name!r} is a {type(tensor).__name__}, not a tensor")
            if tuple(tensor.shape) != tuple(target.shape):
                raise ValueError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}; the model's is "
                    f"{tuple(target.shape)}"
                )
        with torch.no_grad():
            for name, tensor in weights.items():
                targets[name].copy_(tensor)
        self._weights_version += 1
        self._prefix.clear()
        self.stats.prefix_cache_bytes = 0
        self.stats.weight_updates += 1
        return len(weights)

    def _admit(self, jobs: list[_Job]) -> None:
        """Prefill ``jobs`` together (after their cached prefixes) and merge them into the
        running batch."""
        rows: list[_Row] = []
        for job in jobs:
            try:
                rows.append(self._new_row(job))
            except Exception as exc:
                self._fail(job, exc)
        if not rows:
            return
        prompts = [row.job.prompt_ids for row in rows]
        if self.prefix_cache_bytes:
            if len(rows) > 1:
                self._prefill_shared(prompts)
            self.stats.prefix_lookups += len(prompts)
        ids, attn, positions, cache, reused = self._prefill_inputs(prompts)
        self.stats.prefix_hit_tokens += sum(reused)
        try:
            out = self._prefill_forward(ids, attn, positions, cache)
        except Exception as exc:
            log.exception("prefill failed")
            for row in rows:
                self._fail(row.job, exc)
            return
        self.stats.prefill_passes += 1
        logits = out.logits[:, -1, :].float()
        bitmask = xgr.allocate_token_bitmask(len(rows), self._vocab_size)
        for i, row in enumerate(rows):
            if row.matcher is not None:
                row.matcher.fill_next_token_bitmask(bitmask, i)
            # now, not at the end: requests admitted while this one decodes reuse its prompt
            self._remember(row, out.past_key_values, attn, i)
        self._merge(rows, out.past_key_values, attn, attn.sum(-1), logits, bitmask)

    def _prefill_inputs(
        self, prompts: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, list[int]]:
        """Input ids, attention mask, position ids and starting cache of a prefill of
        ``prompts``, and how many tokens of each come from the prefix cache.

        Prompt ``i`` reuses ``r_i`` cached tokens and prefills the ``n_i`` after them. Columns:
        ``P = max r`` of cached KV (row ``i``'s right-aligned), then ``W = max n`` of new
        tokens (right-aligned): ``[pad | reused | pad | new]``, positions counted over the
        mask, so every token keeps its true position.
        """
        model = self._model
        assert model is not None
        from transformers import DynamicCache

        prefixes = [self._lookup(prompt) for prompt in prompts]
        reused = [len(blocks) * self._prefix.block for blocks in prefixes]
        news = [prompt[r:] for prompt, r in zip(prompts, reused, strict=True)]
        prefix_width, width = max(reused), max(len(new) for new in news)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), prefix_width + width), dtype=torch.long)
        for i, (r, new) in enumerate(zip(reused, news, strict=True)):
            ids[i, width - len(new) :] = torch.tensor(new, dtype=torch.long)
            attn[i, prefix_width - r : prefix_width] = 1
            attn[i, prefix_width + width - len(new) :] = 1
        positions = (attn.cumsum(-1) - 1).clamp(min=0)[:, prefix_width:]
        self.stats.prefilled_tokens += sum(len(new) for new in news)
        self.stats.prefill_padded_tokens += len(prompts) * width
        if prefix_width == 0:
            return ids, attn, positions, DynamicCache(config=model.config), reused
        cache = DynamicCache(ddp_cache_data=stack_prefixes(prefixes, prefix_width))
        return ids, attn, positions, cache, reused

    def _lookup(self, prompt: list[int]) -> list[torch.Tensor]:
        """Cached KV blocks for ``prompt``, short of its last token (whose logits we need)."""
        if self.prefix_cache_bytes == 0:
            return []
        return self._prefix.match(prompt, len(prompt) - 1)

    def _prefill_shared(self, prompts: list[list[int]]) -> None:
        """Prefill once, and cache, the prefixes that several of ``prompts`` share and the
        cache lacks (an evaluation's system prompt in its first group, the rollouts of one
        GRPO prompt): otherwise each row of the group would prefill its own copy."""
        shared = shared_prefixes(prompts, self._prefix.block)
        block = self._prefix.block
        shared = [p for p in shared if len(p) - len(self._lookup(p)) * block >= SHARED_MIN]
        if not shared:
            return
        before = self.stats.prefilled_tokens
        ids, attn, positions, cache, _ = self._prefill_inputs(shared)
        try:
            out = self._prefill_forward(ids, attn, positions, cache)
        except Exception:
            log.exception("shared-prefix prefill failed; the group prefills it row by row")
            return
        self.stats.prefix_shared_passes += 1
        self.stats.prefix_shared_tokens += self.stats.prefilled_tokens - before
        for i, prefix in enumerate(shared):
            self._store(prefix, out.past_key_values, attn, i)

    def _prefill_forward(
        self, ids: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> Any:
        """One prefill forward pass, keeping only the last column's logits."""
        model = self._model
        assert model is not None
        started = time.perf_counter()
        out = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.prefill_seconds += time.perf_counter() - started
        self.stats.forward_passes += 1
        return out

    def _remember(self, row: _Row, cache: Any, attn: torch.Tensor, index: int) -> None:
        """Keep the KV of ``row`` (row ``index`` of ``cache`` and its mask ``attn``) for later
        prompts: its prompt once prefilled, then prompt and completion when it finishes."""
        if self.prefix_cache_bytes == 0 or row.weights_version != self._weights_version:
            return
        held = int(attn[index].sum())  # prompt and generated tokens run through the model
        self._store((row.job.prompt_ids + row.tokens)[:held], cache, attn, index)

    def _store(self, sequence: list[int], cache: Any, attn: torch.Tensor, index: int) -> None:
        """Cache the KV of ``sequence``: row ``index`` of ``cache``, in the columns its mask
        ``attn`` marks."""
        columns = attn[index].nonzero().squeeze(1)
        layers = cache.layers

        def gather(start: int, end: int) -> torch.Tensor:
            cols = columns[start:end]
            return torch.stack(
                [
                    torch.stack(
                        [
                            la.keys[index].index_select(1, cols),
                            la.values[index].index_select(1, cols),
                        ]
                    )
                    for la in layers
                ]
            )

        self._prefix.store(sequence, gather)
        self.stats.prefix_cache_bytes = self._prefix.bytes
        self.stats.prefix_evicted_blocks = self._prefix.evicted

    def _new_row(self, job: _Job) -> _Row:
        matcher = None if job.grammar is None else xgr.GrammarMatcher(job.grammar)
        temperature = float(job.request.temperature)
        generator: torch.Generator | None = None
        if temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(int(job.request.seed))
        penalty = float(job.request.presence_penalty)
        return _Row(
            job,
            matcher,
            generator,
            temperature,
            penalty=penalty,
            weights_version=self._weights_version,
        )

    def _merge(
        self,
        rows: list[_Row],
        cache: Any,
        attn: torch.Tensor,
        pos: torch.Tensor,
        logits: torch.Tensor,
        bitmask: torch.Tensor,
    ) -> None:
        if not self._rows:
            self._rows, self._cache, self._attn = rows, cache, attn
            self._pos, self._logits, self._bitmask = pos, logits, bitmask
            return
        from transformers import DynamicCache

        old_len, new_len = self._attn.shape[1], attn.shape[1]
        width = max(old_len, new_len)
        layers = []
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            keys = torch.cat(
                [_left_pad(old_layer.keys, width), _left_pad(new_layer.keys, width)], dim=0
            )
            values = torch.cat(
                [_left_pad(old_layer.values, width), _left_pad(new_layer.values, width)], dim=0
            )
            layers.append((keys, values))
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._attn = torch.cat(
            [
                torch.nn.functional.pad(self._attn, (width - old_len, 0)),
                torch.nn.functional.pad(attn, (width - new_len, 0)),
            ],
            dim=0,
        )
        self._rows = self._rows + rows
        self._pos = torch.cat([self._pos, pos])
        self._logits = torch.cat([self._logits, logits])
        self._bitmask = torch.cat([self._bitmask, bitmask])

    def _step(self) -> None:
        """Sample one token per row, retire finished rows, run one forward pass."""
        rows = self._rows
        logits = self._logits
        for i, row in enumerate(rows):
            if row.penalty and row.tokens:
                logits[i, torch.tensor(sorted(set(row.tokens)))] -= row.penalty
        constrained = [i for i, r in enumerate(rows) if r.matcher is not None]
        if constrained:
            xgr.apply_token_bitmask_inplace(logits, self._bitmask, indices=constrained)
        tokens = logits.argmax(dim=-1).tolist()
        sampled = [i for i, r in enumerate(rows) if r.generator is not None]
        if sampled:
            # Inverse-CDF sampling: one uniform draw per row from the row's own generator
            # (torch.multinomial over the 49k vocabulary costs ~1 ms per row).
            temps = torch.tensor([rows[i].temperature for i in sampled]).unsqueeze(1)
            probs = torch.softmax(logits[sampled].double() / temps, dim=-1)
            cdf = probs.cumsum_(dim=-1)
            draws = torch.cat(
                [torch.rand(1, generator=rows[i].generator, dtype=torch.float64) for i in sampled]
            )
            # Strictly below the total, so a zero-probability tail token is never picked.
            targets = (draws * cdf[:, -1] * (1.0 - 1e-9)).unsqueeze(1)
            found = torch.searchsorted(cdf, targets, right=True).squeeze(1)
            picks: list[int] = found.clamp_(max=cdf.shape[1] - 1).tolist()
            for j, i in enumerate(sampled):
                tokens[i] = int(picks[j])

        finished: dict[int, FinishReason] = {}
        for i, row in enumerate(rows):
            if row.job.cancelled:
                finished[i] = "stop"
                continue
            token = int(tokens[i])
            try:
                if row.matcher is not None:
                    if not row.matcher.accept_token(token):
                        raise GenerationFailedError(f"grammar rejected token {token}")
                    if row.matcher.is_terminated():
                        row.stop_token_id = token
                        finished[i] = "stop"
                        continue
                elif token in self._stop_ids:
                    row.stop_token_id = token
                    finished[i] = "stop"
                    continue
                row.tokens.append(token)
            except Exception as exc:
                self._fail(row.job, exc)
                row.job.cancelled = True
                finished[i] = "stop"
                continue
            if row.matcher is not None:
                row.matcher.fill_next_token_bitmask(self._bitmask, i)
                assert self._nonstop_bits is not None
                if not bool((self._bitmask[i] & self._nonstop_bits).any()):
                    finished[i] = "stop"  # the grammar is complete: only a stop token fits
                    continue
            if len(row.tokens) >= row.job.max_new_tokens:
                finished[i] = "length"

        for i, reason in finished.items():
            if not rows[i].job.cancelled:
                self._finish(rows[i], reason)
                self._remember(rows[i], self._cache, self._attn, i)
        if finished:
            keep = [i for i in range(len(rows)) if i not in finished]
            if not keep:
                self._reset_batch()
                return
            self._select(keep)

        model = self._model
        assert model is not None
        rows = self._rows
        batch = len(rows)
        input_ids = torch.tensor([[r.tokens[-1]] for r in rows], dtype=torch.long)
        self._attn = torch.cat([self._attn, torch.ones((batch, 1), dtype=torch.long)], dim=1)
        started = time.perf_counter()
        try:
            out = model(
                input_ids=input_ids,
                attention_mask=self._attn,
                position_ids=self._pos.unsqueeze(1),
                past_key_values=self._cache,
                use_cache=True,
            )
        except Exception as exc:
            log.exception("decode step failed")
            for row in rows:
                self._fail(row.job, exc)
            self._reset_batch()
            return
        self._cache = out.past_key_values
        self._pos = self._pos + 1
        self._logits = out.logits[:, -1, :].float()
        self.stats.decode_seconds += time.perf_counter() - started
        self.stats.forward_passes += 1
        self.stats.decode_steps += 1
        self.stats.max_batch_size = max(self.stats.max_batch_size, batch)
        by_rows = self.stats.decode_steps_by_rows
        by_rows[batch] = by_rows.get(batch, 0) + 1

    def _select(self, keep: list[int]) -> None:
        """Keep only rows ``keep``, then drop cache columns that are padding in every row."""
        index = torch.tensor(keep, dtype=torch.long)
        self._rows = [self._rows[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._attn = self._attn[index]
        self._pos = self._pos[index]
        self._logits = self._logits[index]
        self._bitmask = self._bitmask[index]
        first = int(self._attn.any(dim=0).to(torch.int8).argmax())
        if first > 0:
            self._attn = self._attn[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]

    def _reset_batch(self) -> None:
        self._rows = []
        self._cache = None
        self._attn = torch.zeros(0, 0, dtype=torch.long)
        self._pos = torch.zeros(0, dtype=torch.long)
        self._logits = torch.zeros(0, 0)
        self._bitmask = torch.zeros(0, 0, dtype=torch.int32)

    def _finish(self, row: _Row, reason: FinishReason) -> None:
        tokenizer = self._tokenizer
        assert tokenizer is not None
        try:
            with self._tokenizer_lock:
                text = tokenizer.decode(row.tokens, skip_special_tokens=True)
        except Exception as exc:
            self._fail(row.job, exc)
            return
        result = Generation(
            text=str(text),
            finish_reason=reason,
            prompt_tokens=len(row.job.prompt_ids),
            completion_tokens=len(row.tokens),
            token_ids=tuple(row.tokens),
            stop_token_id=row.stop_token_id,
        )
        self.stats.requests_completed += 1
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        _deliver(row.job.loop, row.job.future, result, None)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self.stats.requests_failed += 1
        if not isinstance(exc, ToolsimError):
            err: BaseException = BackendUnavailableError(f"embedded generation failed: {exc}")
            err.__cause__ = exc
            exc = err
        _deliver(job.loop, job.future, None, exc)

    def stats_snapshot(self) -> EmbeddedStats:
        """A copy of the counters."""
        stats = self.stats
        return replace(stats, decode_steps_by_rows=dict(stats.decode_steps_by_rows))


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bfloat16 where the CPU computes it natively (AVX512-BF16/AMX; measured here
    4x faster prefill and 1.8x faster decode at batch 16 than float32), else float32."""
    if name == "auto":
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return torch.bfloat16 if native else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"embedded dtype must be auto, float32 or bfloat16, not {name!r}")
    return dtypes[name]


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad a ``[batch, heads, seq, dim]`` cache tensor on the left of ``seq``."""
    missing = width - tensor.shape[2]
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0))


def _deliver(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    """Resolve ``future`` on its own loop, from any thread; a closed loop or a cancelled
    future is ignored."""

    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(settle)
