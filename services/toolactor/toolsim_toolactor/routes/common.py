"""Parsing helpers the routes share."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from toolsim.errors import InvalidRequestError, InvalidToolCallError
from toolsim.http import parse_model as parse_body

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], body: bytes) -> M:
    """Validate a JSON body; a bad ``tool_calls`` entry is ``invalid_tool_call``."""
    try:
        return parse_body(model, body)
    except InvalidRequestError as exc:
        if exc.param and exc.param.startswith("tool_calls"):
            raise InvalidToolCallError(exc.message, param=exc.param) from exc
        raise
