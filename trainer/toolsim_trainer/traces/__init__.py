"""AutoAgent and AutoTraj: teacher traces through the real services, scored, repaired, exported.

Modules, in the order data flows through them:

- ``generate``: a teacher (an LLM ``Policy``, or the ``gold`` bootstrap of ``gold``) answers each
  question through the ToolMaker's toolset and a ToolActor episode; one ``records.TraceRecord``
  JSONL line per (question, candidate), resumable.
- ``scoring``: each quality dimension a pure function, and the keep / repair / set-aside verdict.
- ``repair``: an LLM repairer rewrites what was not kept; its calls are executed again (real
  observations only), the repair is re-scored and kept only if it scores higher.
- ``export``: the SFT and preference data sets TRL reads as they are, and the report.
- ``cli``: ``toolsim traces generate | score | repair | export``.
"""
