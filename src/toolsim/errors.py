"""Every error toolsim reports, each with a stable ``code`` and an HTTP status.

    ToolsimError                      500 internal_error
    ├── InvalidRequestError           400 invalid_request      (malformed body, bad field)
    │   ├── InvalidArgumentsError     400 invalid_arguments    (tool arguments vs. ``parameters``)
    │   ├── InvalidToolCallError      400 invalid_tool_call    (malformed tool_call object)
    │   └── InvalidToolDefinitionError 400 invalid_tool_definition (names, JSON Schema)
    ├── NotFoundError                 404 not_found
    │   ├── ToolsetNotFoundError      404 toolset_not_found
    │   ├── ToolNotFoundError         404 tool_not_found
    │   └── EpisodeNotFoundError      404 episode_not_found
    ├── AuthenticationError           401 invalid_api_key      (missing or unknown API key)
    ├── PayloadTooLargeError          413 payload_too_large
    ├── RateLimitExceededError        429 rate_limit_exceeded  (the key's token bucket is empty)
    ├── RegistryFullError             507 registry_full        (in-memory registry at its cap)
    ├── BackendUnavailableError       503 backend_unavailable  (engine down or timing out)
    │   ├── BackendTimeoutError       503 backend_unavailable  (no answer within llm_timeout_s)
    │   └── StoreUnavailableError     503 store_unavailable    (registry's Redis down)
    ├── GenerationFailedError         502 generation_failed    (no valid observation after retries)
    └── LiveToolError                 502 live_tool_failed     (a real endpoint failed)

Handlers turn them into the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}``; nothing else reaches a client.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ToolsimError(Exception):
    """Base class: a message for people, a stable code for programs."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_envelope(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` for transient failures)."""
        return {}


class InvalidRequestError(ToolsimError):
    status_code = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class InvalidArgumentsError(InvalidRequestError):
    code = "invalid_arguments"


class InvalidToolCallError(InvalidRequestError):
    code = "invalid_tool_call"


class InvalidToolDefinitionError(InvalidRequestError):
    code = "invalid_tool_definition"


class NotFoundError(ToolsimError):
    status_code = 404
    code = "not_found"
    error_type = "not_found_error"


class ToolsetNotFoundError(NotFoundError):
    code = "toolset_not_found"


class ToolNotFoundError(NotFoundError):
    code = "tool_not_found"


class EpisodeNotFoundError(NotFoundError):
    code = "episode_not_found"


class AuthenticationError(ToolsimError):
    """No API key, or one this server does not know (``TOOLSIM_API_KEYS``)."""

    status_code = 401
    code = "invalid_api_key"
    error_type = "invalid_request_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="toolsim"'}


class RateLimitExceededError(ToolsimError):
    """The API key made more requests than its rate allows. Transient."""

    status_code = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class PayloadTooLargeError(ToolsimError):
    status_code = 413
    code = "payload_too_large"
    error_type = "invalid_request_error"


class RegistryFullError(ToolsimError):
    """The in-process registry holds as many toolsets as it may (``max_toolsets``).

    Toolsets are never evicted (a client holding an id would find it gone); an operator who
    needs more runs Redis, or raises the cap."""

    status_code = 507
    code = "registry_full"
    error_type = "insufficient_storage_error"


class BackendUnavailableError(ToolsimError):
    """The LLM engine cannot be reached, refused, or timed out. Transient."""

    status_code = 503
    code = "backend_unavailable"
    error_type = "service_unavailable_error"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class BackendTimeoutError(BackendUnavailableError):
    """A generation started but the engine did not answer in time (same code: a client
    retries either the same way; the services count the two apart)."""


class GenerationFailedError(ToolsimError):
    """The engine answered, but no valid output came out within the retry budget."""

    status_code = 502
    code = "generation_failed"
    error_type = "upstream_error"


class StoreUnavailableError(BackendUnavailableError):
    """The registry (toolsets, episodes) cannot be read or written. Transient."""

    code = "store_unavailable"


class LiveToolError(ToolsimError):
    """A real tool endpoint (``live``/``record`` mode) failed or answered something unusable."""

    status_code = 502
    code = "live_tool_failed"
    error_type = "upstream_error"
