"""Pure Flax language models with named hook points."""
from lmjax.model.config import ModelConfig
from lmjax.model.hooks import Hooks
from lmjax.model.transformer import Transformer, hook_names

__all__ = ["ModelConfig", "Hooks", "Transformer", "hook_names"]
