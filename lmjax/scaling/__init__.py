"""Scaling: parameter and FLOP accounting (sweeps and fits come later)."""
from lmjax.scaling.accounting import count_params, flops_per_token, matmul_params

__all__ = ["count_params", "flops_per_token", "matmul_params"]
