"""Reinforcement learning: GRPO datasets and rewards for both Memory-R1 agents, and the verl export.

``datasets`` turns LoCoMo plus the observation-replay teacher banks into prompt rows; ``rewards``
scores completions (exact match for the Answer Agent, frozen-agent exact match for the Memory
Manager); ``export_verl`` writes the same rows in verl's parquet layout. Nothing is imported here, so
``import memr1.rl`` stays cheap.
"""
