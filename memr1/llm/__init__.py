"""Model backends: the policy loader (transformers, Unsloth on CUDA) and the tiny test model.

Importing this package is cheap: torch and transformers are imported only when a model is built
or loaded, so that Unsloth (on CUDA) can still be imported before them.
"""

from memr1.llm.load import Policy, load_policy
from memr1.llm.tiny import build_tiny_model, tiny_model_path

__all__ = ["Policy", "build_tiny_model", "load_policy", "tiny_model_path"]
