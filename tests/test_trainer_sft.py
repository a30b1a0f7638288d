"""Stage-1 SFT: config rules, dataset checks, the loss mask (only the policy's own tokens are
trained), append-only tokenization across turns, and a real short LoRA run that resumes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import packaged_model_dir
from toolsim_trainer.data import DatasetError
from toolsim_trainer.grammar import (
    SYSTEM_PROMPT,
    AssistantTurn,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    Trace,
    render_turn,
    trace_to_messages,
)
from toolsim_trainer.train.common import ConfigError, load_config

SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search Wikipedia; returns the top passages.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "search terms"}},
            "required": ["query"],
        },
    },
}
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
SHORT_SYSTEM = "Think in <think></think>, call tools in <tool_call>, answer in <answer></answer>."


def _search(call_id: str, query: str) -> ToolCallItem:
    return ToolCallItem("search", {"query": query}, id=call_id)


def _results(call_id: str, *passages: str) -> ToolResponse:
    return ToolResponse(call_id, json.dumps({"results": list(passages)}))


def search_traces(system: str = SYSTEM_PROMPT) -> list[Trace]:
    """Hand-written search traces in the shape AutoAgent produces (one and two hops)."""
    return [
        Trace(
            "Who directed the film Jaws?",
            [
                AssistantTurn(
                    "I need the director of Jaws.", (_search("c1", "Jaws film director"),)
                ),
                ToolTurn((_results("c1", "Jaws is a 1975 film directed by Steven Spielberg."),)),
                AssistantTurn("The passage names Steven Spielberg.", answer="Steven Spielberg"),
            ],
            system=system,
        ),
        Trace(
            "In which country is the Eiffel Tower?",
            [
                AssistantTurn("Search for the Eiffel Tower.", (_search("c1", "Eiffel Tower"),)),
                ToolTurn((_results("c1", "The Eiffel Tower is a tower in Paris, France."),)),
                AssistantTurn("Paris is in France.", answer="France"),
            ],
            system=system,
        ),
        Trace(
            "Who directed the film that won Best Picture at the 1998 Academy Awards?",
            [
                AssistantTurn(
                    "First find the 1998 Best Picture.", (_search("c1", "1998 Best Picture"),)
                ),
                ToolTurn(
                    (_results("c1", "Titanic won Best Picture at the 70th Academy Awards (1998)."),)
                ),
                AssistantTurn(
                    "Now the director of Titanic.", (_search("c2", "Titanic 1997 director"),)
                ),
                ToolTurn(
                    (
                        _results(
                            "c2", "Titanic is a 1997 film written and directed by James Cameron."
                        ),
                    )
                ),
                AssistantTurn("Titanic was directed by James Cameron.", answer="James Cameron"),
            ],
            system=system,
        ),
        Trace(
            "When was the author of Dune born?",
            [
                AssistantTurn("Who wrote Dune?", (_search("c1", "Dune novel author"),)),
                ToolTurn((_results("c1", "Dune is a 1965 novel by Frank Herbert."),)),
                AssistantTurn(
                    "Find Frank Herbert's birth date.", (_search("c2", "Frank Herbert born"),)
                ),
                ToolTurn((_results("c2", "Frank Herbert (October 8, 1920 - February 11, 1986)."),)),
                AssistantTurn("He was born on October 8, 1920.", answer="October 8, 1920"),
            ],
            system=system,
        ),
    ]


def parallel_call_trace() -> Trace:
    """Two calls in one turn with different argument keys (the null-filled-struct trap)."""
    return Trace(
        "How many years passed between the founding of Rome (753 BC) and the fall of Constantinople?",
        [
            AssistantTurn(
                "Look up the fall and prepare the arithmetic.",
                (
                    _search("c1", "fall of Constantinople year"),
                    ToolCallItem("calculator", {"expression": "1453 + 753"}, id="c2"),
                ),
            ),
            ToolTurn(
                (
                    _results("c1", "Constantinople fell to the Ottomans in 1453."),
                    ToolResponse("c2", '{"value": 2206}'),
                )
            ),
            AssistantTurn("1453 + 753 = 2206 years.", answer="2206"),
        ],
    )


def sft_row(trace: Trace, tools: Sequence[dict[str, Any]] = (SEARCH,)) -> dict[str, Any]:
    return {"messages": trace_to_messages(trace), "tools": json.dumps(list(tools))}


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    rows = [sft_row(t) for t in search_traces()]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def sft_config(dataset: Path, output: Path, *overrides: str) -> Any:
    from toolsim_trainer.train.sft import ToolsimSFTConfig

    base = [
        f"dataset_path={dataset}",
        f"output_dir={output}",
        f"model_path={packaged_model_dir()}",
        "report_to=[]",
        "bf16=false",
        "activation_checkpointing=false",
    ]
    return load_config(ToolsimSFTConfig, None, [*base, *overrides])


# ---------------------------------------------------------------------------- config rules


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("assistant_only_loss=false", "assistant_only_loss must be true"),
        ("packing=true", "set packing=false"),
        ("chat_template_path=templates/other.jinja", "remove chat_template_path"),
        ("lora_r=0", r"lora_r must be > 0 \(got 0\)"),
        ("lora_alpha=-1", "lora_alpha must be > 0"),
        ("lora_dropout=1.0", r"lora_dropout must be in \[0, 1\)"),
        ("lora_target_modules=[]", "lora_target_modules is empty"),
        ("eval_fraction=1.0", r"eval_fraction must be in \[0, 1\)"),
        ("eval_strategy=steps", "set eval_fraction"),
        (
            "dataset_path=/nonexistent/sft.jsonl",
            "dataset_path=/nonexistent/sft.jsonl does not exist",
        ),
        ("dataset_path=null", "dataset_path is required"),
        ("model_path=/nonexistent/model", "toolsim model fetch"),
    ],
)
def test_config_rule_says_how_to_fix(
    sft_file: Path, tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        sft_config(sft_file, tmp_path / "run", override)


def test_config_accepts_eval_strategy_with_an_eval_split(sft_file: Path, tmp_path: Path) -> None:
    config = sft_config(sft_file, tmp_path / "run", "eval_strategy=steps", "eval_fraction=0.25")
    assert (config.eval_strategy, config.eval_fraction) == ("steps", 0.25)
    assert config.assistant_only_loss is True and config.report_to == []


# ---------------------------------------------------------------------------- dataset checks


def _load(path: Path, tmp_path: Path, *overrides: str) -> tuple[Any, Any]:
    from toolsim_trainer.train.sft import load_sft_datasets

    return load_sft_datasets(sft_config(path, tmp_path / "run", *overrides))


def test_missing_column_names_the_column_and_the_file(tmp_path: Path) -> None:
    rows = [sft_row(t) for t in search_traces()]
    del rows[2]["tools"]
    path = write_jsonl(tmp_path / "no_tools.jsonl", rows)
    with pytest.raises(DatasetError, match=rf"{path}:3: missing column 'tools'"):
        _load(path, tmp_path)


def test_string_arguments_are_rejected(tmp_path: Path) -> None:
    """A JSON-string ``arguments`` would be rendered quoted by the template's ``tojson``."""
    row = {"messages": trace_to_messages(search_traces()[0], arguments="string"), "tools": "[]"}
    path = write_jsonl(tmp_path / "string_args.jsonl", [row])
    with pytest.raises(
        DatasetError,
        match=r"row 1: messages\[2\] tool call arguments must be a JSON object, got str",
    ):
        _load(path, tmp_path)


def test_rows_breaking_the_grammar_are_rejected(tmp_path: Path) -> None:
    rows = [sft_row(t) for t in search_traces()]
    rows[1]["messages"][-1]["content"] = "<answer>France</answer>"  # no <think>
    path = write_jsonl(tmp_path / "bad_grammar.jsonl", rows)
    with pytest.raises(DatasetError, match=r"row 2: messages\[4\]: missing_think"):
        _load(path, tmp_path)
    train, _ = _load(path, tmp_path, "check_grammar=false")
    assert len(train) == 4


def test_eval_fraction_holds_out_rows_deterministically(sft_file: Path, tmp_path: Path) -> None:
    train, held = _load(sft_file, tmp_path, "eval_fraction=0.25")
    again_train, again_held = _load(sft_file, tmp_path, "eval_fraction=0.25")
    assert (len(train), len(held)) == (3, 1)
    assert list(held["messages"]) == list(again_held["messages"])
    assert list(train["messages"]) == list(again_train["messages"])
    questions = {m[1]["content"] for m in [*train["messages"], *held["messages"]]}
    assert questions == {t.question for t in search_traces()}


# ---------------------------------------------------------------------------- what is trained


def _trained_spans(input_ids: list[int], labels: list[int], tokenizer: Any) -> list[str]:
    spans: list[list[int]] = []
    previous = -100
    for token, label in zip(input_ids, labels, strict=True):
        if label != -100:
            if previous == -100:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return [tokenizer.decode(span) for span in spans]


@pytest.mark.slow
def test_only_the_assistant_turns_are_trained(tmp_path: Path) -> None:
    from toolsim_trainer.train.sft import build_sft_trainer

    traces = [*search_traces(), parallel_call_trace()]
    rows = [sft_row(t, (SEARCH, CALCULATOR)) for t in traces]
    config = sft_config(
        write_jsonl(tmp_path / "sft.jsonl", rows), tmp_path / "run", "max_length=2048"
    )
    trainer = build_sft_trainer(config)
    tokenizer = trainer.processing_class
    dataset = trainer.train_dataset
    assert len(dataset) == len(traces)
    by_question = {t.question: t for t in traces}
    for row in dataset:
        trace = by_question[row["messages"][1]["content"]]
        spans = _trained_spans(row["input_ids"], row["labels"], tokenizer)
        # TRL's training template marks "\n" + turn + "<|im_end|>\n" after "<|im_start|>assistant".
        expected = ["\n" + render_turn(turn) + "<|im_end|>\n" for turn in trace.assistant_turns]
        assert spans == expected
        trained = "".join(spans)
        for context in (
            "<tool_response>",
            "<|im_start|>",
            SYSTEM_PROMPT[:40],
            trace.question,
            "# Tools",
        ):
            assert context not in trained
        full = tokenizer.decode(row["input_ids"])
        assert (
            "<tool_response>" in full and SYSTEM_PROMPT in full and '"name": "calculator"' in full
        )
    parallel = next(r for r in dataset if r["messages"][1]["content"] == traces[-1].question)
    text = tokenizer.decode(parallel["input_ids"])
    assert '{"name": "calculator", "arguments": {"expression": "1453 + 753"}}' in text
    assert "null" not in text  # no keys of the other call's arguments filled in


@pytest.mark.slow
def test_rows_cut_at_max_length_are_counted_not_hidden(tmp_path: Path) -> None:
    from toolsim_trainer.train.common import read_metrics
    from toolsim_trainer.train.sft import build_sft_trainer

    rows = [sft_row(t, ()) for t in search_traces(SHORT_SYSTEM)]
    dataset = write_jsonl(tmp_path / "sft.jsonl", rows)
    build_sft_trainer(sft_config(dataset, tmp_path / "run", "max_length=100"))
    (record,) = read_metrics(tmp_path / "run")
    assert record["data/rows_cut_at_max_length"] >= 2 and record["data/rows_dropped"] == 0
    with pytest.raises(DatasetError, match="every row's prompt is longer than max_length=20"):
        build_sft_trainer(sft_config(dataset, tmp_path / "run2", "max_length=20"))


def _turn_boundaries(messages: list[dict[str, Any]]) -> list[int]:
    """Message counts that end a whole turn (a run of tool messages is one user turn)."""
    ends = []
    for k in range(2, len(messages) + 1):
        last, following = messages[k - 1], messages[k] if k < len(messages) else None
        if not (last["role"] == "tool" and following is not None and following["role"] == "tool"):
            ends.append(k)
    return ends


@pytest.mark.slow
@pytest.mark.parametrize("template", ["inference", "training"])
def test_tokenization_is_append_only_across_turns(template: str) -> None:
    """Tokens of the conversation cut after turn k are a prefix of the full conversation's
    (with and without the generation prompt before an assistant turn): no re-tokenization
    drift at turn boundaries on SmolLM2's tokenizer with the Qwen2.5 template."""
    from trl.chat_template_utils import get_training_chat_template

    from toolsim_trainer.chat_template import load_tokenizer, qwen25_template

    tokenizer = load_tokenizer(packaged_model_dir())
    assert tokenizer.chat_template == qwen25_template()
    chat_template = get_training_chat_template(tokenizer) if template == "training" else None
    tools = [SEARCH, CALCULATOR]

    def ids(messages: list[dict[str, Any]], generation_prompt: bool = False) -> list[int]:
        encoded = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=chat_template,
            add_generation_prompt=generation_prompt,
            tokenize=True,
            return_dict=True,
        )
        return list(encoded["input_ids"])

    checked = 0
    for trace in [*search_traces(), parallel_call_trace()]:
        messages = trace_to_messages(trace)
        full = ids(messages)
        for k in _turn_boundaries(messages):
            prefix = ids(messages[:k])
            assert full[: len(prefix)] == prefix, f"{trace.question!r}: drift after message {k}"
            if k < len(messages) and messages[k]["role"] == "assistant":
                prompt = ids(messages[:k], generation_prompt=True)
                assert full[: len(prompt)] == prompt, f"{trace.question!r}: generation prompt {k}"
            checked += 1
    assert checked >= 20


# ---------------------------------------------------------------------------- a real run


class _InitialWeights:
    """Snapshot of the trainable (LoRA) weights when training starts."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        snapshot: dict[str, Any] = {}
        self.weights = snapshot

        class Callback(TrainerCallback):
            def on_train_begin(
                self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
            ) -> None:
                if not snapshot:
                    for name, param in model.named_parameters():
                        if param.requires_grad:
                            snapshot[name.replace(".default", "")] = param.detach().clone()

        self.callback = Callback()


def changed_adapter_weights(initial: dict[str, Any], adapter_dir: Path) -> tuple[int, int, int]:
    """(saved tensors, tensors that differ from their initial value, lora_B tensors)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert saved and set(saved) <= set(initial), sorted(set(saved) - set(initial))[:3]
    changed = sum(1 for k, v in saved.items() if not torch.equal(v, initial[k].to(v.dtype)))
    lora_b = [k for k in saved if "lora_B" in k]
    assert all(not torch.any(initial[k]) for k in lora_b)  # PEFT starts B at zero
    assert all(torch.any(saved[k]) for k in lora_b), "a lora_B stayed at zero: it never trained"
    return len(saved), changed, len(lora_b)


@dataclass
class FirstRun:
    run_dir: Path
    metrics: list[dict[str, Any]]
    initial: dict[str, Any]
    seconds: float


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    import time

    from toolsim_trainer.train.common import read_metrics
    from toolsim_trainer.train.sft import run_sft

    folder = tmp_path_factory.mktemp("sft")
    # No tool list in the prompt: the rows stay ~120 tokens, so a step takes seconds on 2 cores.
    traces = search_traces(SHORT_SYSTEM)
    rows = [sft_row(t, ()) for t in [*traces, traces[0]]]
    config = sft_config(
        write_jsonl(folder / "sft.jsonl", rows),
        folder / "run",
        "max_steps=1",
        "save_steps=1",
        "per_device_train_batch_size=1",
        "lora_r=4",
        "lora_alpha=8",
        "lora_target_modules=[q_proj, v_proj]",
        "max_length=384",
        "learning_rate=1e-3",
        "lr_scheduler_type=constant",  # a decaying schedule reaches 0 at the first max_steps
        "activation_checkpointing=false",
        "eval_fraction=0.2",
        "report_to=[tensorboard]",
    )
    initial = _InitialWeights()
    started = time.perf_counter()
    run_dir = run_sft(config, callbacks=[initial.callback])
    seconds = time.perf_counter() - started
    yield FirstRun(run_dir, read_metrics(run_dir), dict(initial.weights), seconds)


@pytest.mark.slow
@pytest.mark.train
def test_sft_run_trains_and_saves_the_adapter(sft_run: FirstRun) -> None:
    from toolsim_trainer.chat_template import qwen25_template

    final = sft_run.run_dir / "final"
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["task_type"]) == (4, "CAUSAL_LM")
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    saved, changed, lora_b = changed_adapter_weights(sft_run.initial, final)
    assert saved == 2 * 30 * 2 and lora_b == 60  # q/v x 30 layers x (A, B)
    # One step moves every B; A's gradient is B^T(...) = 0 while B is 0, so A moves from step 2.
    assert changed == lora_b
    tokenizer_config = json.loads((final / "tokenizer_config.json").read_text())
    template = tokenizer_config.get("chat_template") or (final / "chat_template.jinja").read_text()
    assert template == qwen25_template()
    assert (sft_run.run_dir / "checkpoint-1" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.train
def test_sft_run_writes_metrics_config_and_tensorboard(sft_run: FirstRun) -> None:
    from toolsim_trainer.plot import group_panels, read_series
    from toolsim_trainer.train.common import config_to_dict
    from toolsim_trainer.train.sft import ToolsimSFTConfig

    losses = [r for r in sft_run.metrics if "loss" in r]
    assert [r["step"] for r in losses] == [1]
    assert all(r["loss"] > 0 and "learning_rate" in r and "epoch" in r for r in losses)
    assert [r["step"] for r in sft_run.metrics if "eval_loss" in r] == [1]
    assert [r["step"] for r in sft_run.metrics if "train_runtime" in r] == [1]
    resolved = sft_run.run_dir / "resolved_config.yaml"
    reloaded = load_config(ToolsimSFTConfig, resolved, [])
    assert reloaded.max_steps == 1 and reloaded.lora_r == 4 and reloaded.eval_fraction == 0.2
    assert config_to_dict(reloaded) == config_to_dict(load_config(ToolsimSFTConfig, resolved, []))
    assert list((sft_run.run_dir / "runs").glob("*/events.out.tfevents.*"))
    panels = group_panels(read_series(sft_run.run_dir, "sft"))
    assert {"loss", "learning_rate", "grad_norm", "entropy"} <= set(panels)
    assert {c.key for c in panels["loss"]} == {"loss", "eval_loss"}
    print(f"SFT first run (1 step + eval + save): {sft_run.seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.train
def test_sft_resumes_from_its_last_checkpoint(
    sft_run: FirstRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI on the run's resolved config with more steps continues at step 2."""
    import argparse

    from safetensors.torch import load_file

    from toolsim_trainer.train import sft
    from toolsim_trainer.train.common import read_metrics

    parser = argparse.ArgumentParser()
    sft.configure_parser(parser)
    args = parser.parse_args(
        [
            "--config",
            str(sft_run.run_dir / "resolved_config.yaml"),
            "--set",
            "max_steps=2",
            "--set",
            "save_steps=2",
        ]
    )
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(sft_run.run_dir)
    metrics = read_metrics(sft_run.run_dir)
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2]  # no step trained twice
    assert [r["step"] for r in metrics if "train_runtime" in r] == [1, 2]
    state = json.loads((sft_run.run_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    before = load_file(str(sft_run.run_dir / "checkpoint-1" / "adapter_model.safetensors"))
    after = load_file(str(sft_run.run_dir / "final" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    moved = {k for k in before if not (before[k] == after[k]).all()}
    assert moved == set(before)  # step 2 trained A too: B was restored from the checkpoint
