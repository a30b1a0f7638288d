"""Answer normalisation, exact match and token F1, as the SQuAD/HotpotQA evaluation scripts.

One implementation, in ``toolsim.answers``, shared by the ToolActor's fidelity check, the trace
scorer, the GRPO rewards and ``toolsim eval``: a policy is trained on the same notion of
"correct" that it is measured by, and the simulator checks evidence with it too.
"""

from toolsim.answers import answer_in_text, exact_match, f1_score, is_yes_no, normalize_answer

__all__ = ["answer_in_text", "exact_match", "f1_score", "is_yes_no", "normalize_answer"]
