"""Build the backend the settings ask for (the embedded one is imported only when used)."""

from __future__ import annotations

from pathlib import Path

from toolsim.config import CommonSettings
from toolsim.llm.base import LLMBackend
from toolsim.llm.vllm import VLLMBackend


class ModelNotFetchedError(RuntimeError):
    """The embedded backend was asked for, but the model folder is not there."""


def build_backend(settings: CommonSettings) -> LLMBackend:
    if settings.backend == "vllm":
        return VLLMBackend(
            settings.vllm_url,
            settings.vllm_model,
            api_key=settings.vllm_api_key,
            timeout_s=settings.llm_timeout_s,
            connect_retries=settings.llm_connect_retries,
        )
    model_dir = settings.resolved_model_dir
    if not (model_dir / "config.json").is_file():
        raise ModelNotFetchedError(_missing_model(settings, model_dir))
    try:
        from toolsim.llm.embedded import EmbeddedBackend
    except ImportError as exc:
        raise ModelNotFetchedError(
            f"the embedded backend needs the 'embedded' extra: pip install -e '.[embedded]' ({exc})"
        ) from exc
    return EmbeddedBackend(
        model_dir,
        max_batch_size=settings.embedded_max_batch,
        batch_wait_ms=settings.embedded_batch_wait_ms,
        num_threads=settings.embedded_threads,
        dtype=settings.embedded_dtype,
        prefix_cache_bytes=settings.embedded_prefix_cache_bytes,
    )


def _missing_model(settings: CommonSettings, model_dir: Path) -> str:
    """What is missing and the command that fixes it (``toolsim model fetch`` writes under
    ``TOOLSIM_CACHE_DIR`` and refuses to run while ``TOOLSIM_MODEL_DIR`` is set)."""
    if settings.model_dir is not None:
        fix = (
            "point TOOLSIM_MODEL_DIR at a fetched model folder, or unset it and run "
            "`toolsim model fetch` (or `make model`)"
        )
    else:
        fix = "run `toolsim model fetch` (or `make model`) first"
    return (
        f"no model at {model_dir} (no config.json there): {fix}; or serve from a vLLM server "
        "with TOOLSIM_BACKEND=vllm and TOOLSIM_VLLM_URL"
    )
