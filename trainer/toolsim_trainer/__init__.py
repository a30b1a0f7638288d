"""toolsim's trainer: traces (AutoAgent/AutoTraj), evaluation, SFT, reward model and GRPO.

Everything here reaches the ToolMaker and the ToolActor only through their HTTP contracts,
so pointing a run at live tools is configuration. The trace grammar (``grammar``) and answer
metrics (``answers``) are the shared meaning that generation, rewards and evaluation import.
"""
