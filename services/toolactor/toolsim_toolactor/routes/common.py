"""Parsing helpers the routes share."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from toolsim.errors import InvalidRequestError, InvalidToolCallError
from toolsim.http import validation_error

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], body: bytes) -> M:
    """Validate a JSON body; a bad ``tool_calls`` entry is ``invalid_tool_call``."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        error = validation_error(exc)
        if error.param and error.param.startswith("tool_calls"):
            raise InvalidToolCallError(error.message, param=error.param) from exc
        if exc.errors()[0]["type"] == "json_invalid":
            raise InvalidRequestError(f"request body is not valid JSON: {error.message}") from exc
        raise error from exc
