"""Dense kernels in the "out_in" layout (lmjax.model.layout): the same function."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _model_fixtures import FAST_COMPILE, random_params
from lmjax.model import ModelConfig, Transformer
from lmjax.model.layout import dense_kernels, to_out_in

MODELS = {
    "gpt2_like": dict(),
    "gqa_rope_swiglu_scanned": dict(n_kv_head=2, pos_embedding="rope", mlp="swiglu", norm="rmsnorm",
                                    use_bias=False, tie_embeddings=False, scan_layers=True),
    "hybrid": dict(layer_pattern="MLCA", n_layer=4),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_out_in_layout_computes_the_same_logits(name):
    cfg = ModelConfig(**{**dict(vocab_size=37, n_layer=2, d_model=32, n_head=4, max_len=16), **MODELS[name]})
    model = Transformer(cfg)
    params = random_params(cfg)  # O(1)-scale random values, drawn without compiling an init
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
    out_model, out_params = to_out_in(model, params)

    assert out_model.cfg.kernel_layout == "out_in"
    kernels = dense_kernels(model)
    kernel_leaves = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                     if path[-1].key == "kernel"}
    if name == "hybrid":  # Mamba's depthwise conv is a "kernel" too, but not a Dense one
        assert len(kernels) >= 2 * cfg.n_layer and set(kernels) < kernel_leaves
    else:
        assert set(kernels) == kernel_leaves
    # every Dense kernel moved its input axes last; nothing else changed
    flat_in = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(out_params)[0]:
        key = tuple(k.key for k in path)
        before = flat_in[path]
        if key in kernels:
            n_in, n_out = kernels[key]
            lead = before.ndim - n_in - n_out
            assert leaf.shape == (*before.shape[:lead], *before.shape[lead + n_in:], *before.shape[lead:lead + n_in])
        else:
            assert leaf is before
    # one compiled program per layout (op by op, the hybrid's scans alone took seconds); LLVM
    # at -O0 compiles twice as fast and both sides alike
    want = jax.jit(model.apply, compiler_options=FAST_COMPILE)({"params": params}, tokens)
    assert np.abs(np.asarray(want)).max() > 1  # weights large enough that a wrong layout shows
    got = jax.jit(out_model.apply, compiler_options=FAST_COMPILE)({"params": out_params}, tokens)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_out_in_model_checks_its_kernel_shapes():
    cfg = ModelConfig(vocab_size=37, n_layer=1, d_model=32, n_head=4, max_len=16)
    model = Transformer(cfg)
    params = random_params(cfg)
    out_model, _ = to_out_in(model, params)
    with pytest.raises(Exception, match="kernel"):  # the untransposed weights do not fit
        out_model.apply({"params": params}, jnp.zeros((1, 4), jnp.int32))
