"""Build the backend the settings ask for (the embedded one is imported only when used)."""

from __future__ import annotations

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
        raise ModelNotFetchedError(
            f"no model at {model_dir}: run `toolsim model fetch` first "
            "(or set TOOLSIM_BACKEND=vllm and TOOLSIM_VLLM_URL)"
        )
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
    )
