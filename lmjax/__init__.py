"""lmjax: train language models at every scale, and explain their predictions, in JAX."""

__version__ = "0.1.0"
