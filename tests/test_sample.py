"""The compiled sampler against the full forward pass, and its sampling rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import sharding
from lmjax.model import ModelConfig, Transformer
from lmjax.model.cache import init_cache
from lmjax.sample import _generate, filter_logits, generate, greedy
from lmjax.train.steps import param_shardings

from _model_fixtures import FAST_COMPILE, init_params

# init_std 0.3 makes a random model's next-token distributions varied (not one repeated token)
CFG = ModelConfig(vocab_size=16, n_layer=2, d_model=32, n_head=4, n_kv_head=2, max_len=40, init_std=0.3)


@pytest.fixture(scope="module")
def model_params():
    return Transformer(CFG), init_params(CFG, 0)


@jax.jit
def _padded_forward(params, window):
    return Transformer(CFG).apply({"params": params}, window)


def full_logits(model, params, tokens):
    """Next-token logits of the full forward pass (right-padded to one compiled length: causal)."""
    window = np.zeros((1, CFG.max_len), np.int32)
    window[0, : len(tokens)] = tokens
    return np.asarray(_padded_forward(params, window)[0, len(tokens) - 1])


def greedy_reference(model, params, prompt, n):
    """Step-by-step argmax of the full (uncached) forward pass."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(np.argmax(full_logits(model, params, tokens))))
    return tokens[len(prompt):]


@pytest.mark.parametrize("scan", [False, True])
def test_cached_logits_equal_full_recompute(scan):
    """Tolerance: 1e-5 absolute in float32 (the cache changes only the summation order)."""
    cfg = ModelConfig(**{**CFG.__dict__, "scan_layers": scan, "pos_embedding": "rope"})
    model = Transformer(cfg)
    params = init_params(cfg, 1)
    tokens = jax.random.randint(jax.random.key(2), (3, 30), 0, cfg.vocab_size)
    full = jax.jit(model.apply, compiler_options=FAST_COMPILE)({"params": params}, tokens)
    step = jax.jit(lambda tok, pos, cache: model.apply({"params": params}, tok, pos, cache=cache),
                   compiler_options=FAST_COMPILE)
    logits, cache = step(tokens[:, :10], jnp.broadcast_to(jnp.arange(10), (3, 10)), init_cache(cfg, 3))
    np.testing.assert_allclose(logits, full[:, :10], atol=1e-5)
    for t in range(10, 30):
        logits, cache = step(tokens[:, t:t + 1], jnp.full((3, 1), t), cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_greedy_matches_full_model_and_batching_changes_nothing(model_params):
    model, params = model_params
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13], [4]]
    batched = generate(model, params, prompts, max_new_tokens=15, temperature=0.0)
    for prompt, out in zip(prompts, batched):
        assert out == greedy_reference(model, params, prompt, 15)
        assert generate(model, params, [prompt], max_new_tokens=15, temperature=0.0) == [out]
    assert len(set(map(tuple, batched))) == 3 and any(len(set(o)) > 2 for o in batched)  # non-trivial outputs


def test_top_k_1_and_tiny_temperature_are_greedy(model_params):
    model, params = model_params
    prompts = [[1, 2, 3], [7, 7]]
    greedy = generate(model, params, prompts, max_new_tokens=12, temperature=0.0)
    assert generate(model, params, prompts, max_new_tokens=12, temperature=1.0, top_k=1, seed=5) == greedy
    assert generate(model, params, prompts, max_new_tokens=12, temperature=1e-4, seed=6) == greedy


def test_settings_do_not_recompile(model_params):
    model, params = model_params
    generate(model, params, [[1, 2]], max_new_tokens=3, temperature=0.5)
    before = _generate._cache_size()
    generate(model, params, [[3, 4, 5]], max_new_tokens=9, temperature=0.9, top_k=4, top_p=0.8, seed=7,
             stop_tokens=[3])
    assert _generate._cache_size() == before


def test_stop_tokens_end_rows_and_finished_rows_stop_changing(model_params):
    model, params = model_params
    prompts = [[1, 2, 3], [9]]
    free = generate(model, params, prompts, max_new_tokens=12, temperature=0.0)
    stop = free[0][4]
    stopped = generate(model, params, prompts, max_new_tokens=12, temperature=0.0, stop_tokens=[stop])
    for full, cut in zip(free, stopped):
        end = full.index(stop) + 1 if stop in full else len(full)
        assert cut == full[:end]


# chi-square critical value for 15 degrees of freedom at significance 0.001
CHI2_15_999 = 37.697


def chi_square(counts, probs):
    expected = counts.sum() * probs
    keep = expected > 0
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())


def test_sampling_frequencies_match_softmax(model_params):
    """2,000 first tokens from one prompt vs the model's softmax (chi-square, alpha = 0.001)."""
    model, params = model_params
    prompt, n = [3, 1, 4, 1, 5], 2000
    probs = np.asarray(jax.nn.softmax(full_logits(model, params, prompt) / 0.8))
    draws = generate(model, params, [prompt] * n, max_new_tokens=1, temperature=0.8, seed=11)
    counts = np.bincount([d[0] for d in draws], minlength=CFG.vocab_size).astype(float)
    assert chi_square(counts, probs) < CHI2_15_999
    # and a clearly wrong distribution is rejected by the same test
    assert chi_square(counts, np.full(CFG.vocab_size, 1 / CFG.vocab_size)) > CHI2_15_999


def test_top_k_and_top_p_stay_inside_their_sets(model_params):
    model, params = model_params
    prompt, n = [2, 7, 1, 8], 1000
    logits = full_logits(model, params, prompt)
    order = np.argsort(-logits)
    top3 = set(order[:3].tolist())
    draws = generate(model, params, [prompt] * n, max_new_tokens=1, temperature=1.0, top_k=3, seed=1)
    assert {d[0] for d in draws} == top3
    probs = np.asarray(jax.nn.softmax(logits))
    cumulative = np.cumsum(probs[order])
    nucleus = set(order[: int(np.searchsorted(cumulative, 0.6) + 1)].tolist())
    draws = generate(model, params, [prompt] * n, max_new_tokens=1, temperature=1.0, top_p=0.6, seed=2)
    assert {d[0] for d in draws} <= nucleus and len({d[0] for d in draws}) == len(nucleus)


def test_filter_logits_keeps_the_right_tokens():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, 1.0, **kw)))[0].tolist()
    assert kept(top_k=2, top_p=1.0) == [True, True, False, False, False]
    assert kept(top_k=0, top_p=0.5) == [True, False, False, False, False]
    assert kept(top_k=0, top_p=0.51) == [True, True, False, False, False]
    assert kept(top_k=0, top_p=0.86) == [True, True, True, True, False]
    assert kept(top_k=0, top_p=1.0) == [True] * 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[[]]), "empty"),
        (dict(prompts=[[1] * 35], max_new_tokens=10), "exceeds the model's context"),
        (dict(prompts=[[1, 99]]), "outside the vocabulary"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-1.0), "temperature"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_requests_fail_before_compiling(model_params, kwargs, message):
    model, params = model_params
    request = dict(prompts=[[1, 2]], max_new_tokens=4, temperature=1.0)
    request.update(kwargs)
    before = _generate._cache_size()
    with pytest.raises(ValueError, match=message):
        generate(model, params, request.pop("prompts"), **request)
    assert _generate._cache_size() == before


def test_sharded_sampling_matches_single_device(model_params):
    model, params = model_params
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated devices of tests/conftest.py")
    mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
    sharded = jax.device_put(params, param_shardings(model, mesh))
    prompts = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
    expected = generate(model, params, prompts, max_new_tokens=10, temperature=0.0)
    assert generate(model, sharded, prompts, max_new_tokens=10, temperature=0.0, mesh=mesh) == expected
    # one row decodes with the kernels re-laid out (lmjax.model.layout), here from sharded ones
    assert generate(model, sharded, prompts[:1], max_new_tokens=10, temperature=0.0, mesh=mesh) == expected[:1]


def test_text_api_streams_exactly_the_returned_text():
    import io

    from lmjax.data.tokenizers import build_tokenizer
    from lmjax.sample import sample

    tok = build_tokenizer("byte")
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=4, max_len=48, init_std=0.5)
    model = Transformer(cfg)
    params = init_params(cfg, 3)
    stream = io.StringIO()
    texts = sample(params, model, tok, ["héllo ", "a"], max_new_tokens=30, temperature=1.0, seed=4, stream=stream)
    assert len(texts) == 2 and stream.getvalue() == texts[0]
    ids = generate(model, params, [tok.encode("héllo "), tok.encode("a")], max_new_tokens=30, temperature=1.0,
                   seed=4, stop_tokens=[tok.eos_id])
    assert texts == [tok.decode(i) for i in ids]


def test_decoding_across_cache_growth_matches_full_model(monkeypatch):
    """The decode loop grows its cache through several lengths; outputs must not notice."""
    import lmjax.sample as sample_module

    monkeypatch.setattr(sample_module, "MIN_SPAN", 8)
    cfg = ModelConfig(**{**CFG.__dict__, "max_len": 36, "pos_embedding": "rope"})
    assert sample_module._spans(8, cfg.max_len) == [8, 16, 32, 36]
    model = Transformer(cfg)
    params = init_params(cfg, 4)
    forward = jax.jit(lambda p, w: model.apply({"params": p}, w))

    def reference(prompt, n):
        tokens = list(prompt)
        for _ in range(n):
            window = np.zeros((1, cfg.max_len), np.int32)
            window[0, : len(tokens)] = tokens
            tokens.append(int(np.argmax(forward(params, window)[0, len(tokens) - 1])))
        return tokens[len(prompt):]

    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    out = generate(model, params, prompts, max_new_tokens=30, temperature=0.0)
    assert out == [reference(p, 30) for p in prompts]


def test_greedy_is_argmax_with_first_index_on_ties():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 97)).astype(np.float32)
    logits[0, 0, [4, 9, 60]] = 10.0  # a three-way tie: the first index wins
    logits[1, 2, :] = -np.inf
    logits[1, 2, 50] = 0.0
    logits[2, 4] = np.round(logits[2, 4])  # many ties at the maximum
    np.testing.assert_array_equal(np.asarray(jax.jit(greedy)(logits)), np.argmax(logits, axis=-1))
