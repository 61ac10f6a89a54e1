"""Scaling: parameter and FLOP accounting (accounting), scaling-law fits (fits), figures (plots),
and `lmjax scaling` (cli). Sweeps come later."""
from lmjax.model.accounting import count_params, flops_per_token, matmul_params

__all__ = ["count_params", "flops_per_token", "matmul_params"]
