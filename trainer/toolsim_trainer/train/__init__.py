"""Training stages: Stage-1 SFT (``sft``), the trajectory reward model (``rm``), GRPO (``grpo``).

``common`` holds what every run shares: config loading, the run folder, metrics and resume.
"""
