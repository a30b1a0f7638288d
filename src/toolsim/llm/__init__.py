"""LLM backends behind one seam (see ``base.LLMBackend``)."""

from toolsim.llm.base import Generation, GenerationRequest, LLMBackend

__all__ = ["Generation", "GenerationRequest", "LLMBackend"]
