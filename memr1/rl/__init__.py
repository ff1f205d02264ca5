"""Reinforcement learning: GRPO datasets and rewards for both Memory-R1 agents, and the verl export.

``datasets`` turns LoCoMo plus the observation-replay teacher banks into prompt rows; ``rewards``
scores completions (exact match for the Answer Agent, frozen-agent exact match for the Memory
Manager); ``export_verl`` writes the same rows (and MEM1's tasks) in verl's parquet layout, with the
reward files (``verl_reward``, ``verl_manager_reward``) and PPO / GRPO trainer configs (``verl_configs``).
Nothing is imported here, so ``import memr1.rl`` stays cheap.
"""
