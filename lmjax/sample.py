"""The XLA-compiled sampler: prefill and the whole decode loop in one jit.

    texts = sample(params, model, tokenizer, ["def ", "import"], max_new_tokens=100,
                   temperature=0.8, top_k=40, top_p=0.95, seed=0)

Prompts of different lengths are right-padded into one batch; each row keeps its own
position, and the cache slot of a token is its position, so a row's padding is never
attended to and is overwritten as the row grows. Recurrent mixers (Mamba, LSTM, GRU, gated
conv) keep their states in the same cache pytree; the prefill tells them each row's length
so that their states skip the padding, and those states do not grow with the context.
The program is compiled once per (batch size, prompt bucket, cache span) -- prompts are
padded up to a power of two, and the cache grows in doubling spans from 128 positions only
as far as prompt + max_new_tokens needs -- and the temperature, top-k, top-p, seed, stop
tokens and max_new_tokens are traced values: new settings within those buckets do not
recompile.
"""
from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from lmjax import sharding
from lmjax.errors import LmjaxError
from lmjax.model import Transformer
from lmjax.model.cache import grow_cache, init_cache
from lmjax.model.layout import to_out_in

MIN_BUCKET = 8  # shortest prompt bucket
MIN_SPAN = 128  # shortest cache the decode loop starts with


def _bucket(n: int, limit: int) -> int:
    """Round a prompt length up to a power of two (at least MIN_BUCKET, at most `limit`)."""
    return min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), limit)


def filter_logits(logits, temperature, top_k, top_p):
    """Scale by temperature and mask (to -inf) what top-k and top-p exclude.

    top_k <= 0 and top_p >= 1 disable those filters. Works on [..., vocab].
    """
    logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    vocab = logits.shape[-1]
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(ordered, jnp.broadcast_to(k - 1, logits.shape[:-1])[..., None], axis=-1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
    # nucleus: keep the smallest prefix of the ordered tokens whose mass reaches top_p
    probs = jax.nn.softmax(jnp.where(ordered < kth, -jnp.inf, ordered), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < top_p  # the most likely token is always kept
    floor = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < floor, -jnp.inf, logits)


def choose(logits, key, temperature, top_k, top_p):
    """Next token per row: greedy when temperature == 0, else a filtered sample.

    The branches are lax.conds, so greedy decoding and unfiltered sampling never pay for
    the sort over the vocabulary that top-k / top-p need.
    """

    def sampled(logits):
        filtered = jax.lax.cond(
            (top_k > 0) | (top_p < 1),
            lambda l: filter_logits(l, temperature, top_k, top_p),
            lambda l: l.astype(jnp.float32) / temperature,
            logits,
        )
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, sampled, greedy, logits)


def greedy(logits):
    """argmax over the last axis (the first index on ties), as two plain reductions: XLA:CPU
    runs argmax's paired (value, index) reduction unvectorised, ~210 us over GPT-2's 50257
    logits against ~30 us for these two (measured), on every decoding step."""
    vocab = logits.shape[-1]
    best = jnp.max(logits, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(logits >= best, jnp.arange(vocab), vocab), axis=-1)
    return jnp.minimum(first, vocab - 1).astype(jnp.int32)  # NaN logits: no index matched


def _spans(bucket: int, max_len: int, need: int | None = None) -> list[int]:
    """Cache lengths the decode loop grows through: doubling from the prompt bucket
    (at least MIN_SPAN) until `need` positions fit (default: up to the context)."""
    need = max_len if need is None else min(need, max_len)
    spans = [min(max(bucket, MIN_SPAN), max_len)]
    while spans[-1] < need:
        spans.append(min(2 * spans[-1], max_len))
    return spans


@functools.partial(jax.jit, static_argnums=(0, 10, 11))
def _generate(model: Transformer, params, prompt, lengths, max_new, key, temperature, top_k, top_p, stop_ids,
              on_token=None, last_span=None):
    """prompt [b, P] right-padded, lengths [b] -> (tokens [b, max_len], ends [b]).

    Decoding runs as one while_loop per cache length in _spans, up to `last_span` (static;
    None = the context): attention then reads only the part of the cache that can be
    filled, not the whole context, on every step, and the cache never grows past what the
    request can fill (padding it to the whole context cost ~2% of a 128-token call).
    on_token(tokens [b], done [b]) is called on the host after every step (for streaming).
    """
    b, bucket = prompt.shape
    max_len = model.cfg.max_len
    positions = jnp.broadcast_to(jnp.arange(bucket), (b, bucket))
    spans = _spans(bucket, max_len, last_span)
    cache = init_cache(model.cfg, b, length=spans[0])
    # lengths: recurrent mixers' states stop at each row's last prompt token, not its padding.
    logits, cache = model.apply({"params": params}, prompt, positions, cache=cache, lengths=lengths)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    tokens = jnp.zeros((b, max_len), jnp.int32).at[:, :bucket].set(prompt)

    def body(carry):
        step, tokens, cache, last, ends, done = carry
        nxt = choose(last, jax.random.fold_in(key, step), temperature, top_k, top_p)
        rows = jnp.arange(b)
        tokens = tokens.at[rows, ends].set(jnp.where(done, tokens[rows, ends], nxt))
        logits, cache = model.apply({"params": params}, nxt[:, None], ends[:, None], cache=cache)
        stopped = jnp.any(nxt[:, None] == stop_ids[None, :], axis=-1)
        if on_token is not None:
            io_callback(on_token, None, nxt, done, ordered=True)
        ends = jnp.where(done, ends, ends + 1)
        return step + 1, tokens, cache, logits[:, 0], ends, done | stopped

    step, ends, done = jnp.int32(0), lengths, jnp.zeros((b,), bool)
    for span in spans:
        def cond(carry, span=span):
            step, _, _, _, ends, done = carry
            return (step < max_new) & ~jnp.all(done) & (jnp.max(ends) < span)

        carry = (step, tokens, grow_cache(cache, span), last, ends, done)
        step, tokens, cache, last, ends, done = jax.lax.while_loop(cond, body, carry)
    return tokens, ends


# (id(array), axes) -> (a weak reference to the array, its permuted copy): made once per set
# of weights and dropped with them, not on every call.
_KEPT = {}


@functools.partial(jax.jit, static_argnums=1)
def _permuted(array, axes):
    return jnp.transpose(array, axes)


def _kept_permutation(array, axes):
    """jnp.transpose(array, axes), computed once and kept for as long as `array` lives."""
    axes = tuple(axes)
    key = (id(array), axes)
    entry = _KEPT.get(key)
    if entry is None or entry[0]() is not array:
        # `kept` bound now: at interpreter exit the module's globals may already be None
        entry = (weakref.ref(array, lambda _, key=key, kept=_KEPT: kept.pop(key, None)), _permuted(array, axes))
        _KEPT[key] = entry
    return entry[1]


def _decoding_form(model: Transformer, params, rows: int):
    """The same function with its weights laid out for decoding `rows` rows at a time.

    - A tied model becomes an untied one whose output matrix is the embedding transposed,
      stored [d_model, vocab]: XLA:CPU reads a [vocab, d_model] matrix through a transposed
      matrix-vector product at about half the memory bandwidth (measured: 154 MB at 14 vs
      23 GB/s).
    - With one row, every Dense kernel is stored [*out, *in] (lmjax.model.layout): each
      product is then a matrix-vector product, which reads that layout faster (GPT-2
      small: 13-15% less time per token). From two rows on, [*in, *out] was faster (by
      18-40% at 2-16 rows), so the kernels are left as they are.
    The copies are kept for as long as the weights live: made inside every call, the output
    matrix alone cost GPT-2 small ~180 ms (fresh pages for 154 MB, twice), 1.4 ms per token
    of a 128-token call. Decoding thus holds a second copy of the weights.
    """
    if model.cfg.tie_embeddings:
        params = {**params, "unembed": _kept_permutation(params["embed"], (1, 0))}
        model = Transformer(dataclasses.replace(model.cfg, tie_embeddings=False))
    return to_out_in(model, params, permute=_kept_permutation) if rows == 1 else (model, params)


def check_request(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  temperature: float, top_k: int, top_p: float) -> None:
    """Every problem with a request, raised before anything compiles."""
    cfg = model.cfg
    if not prompts:
        raise LmjaxError("no prompts given")
    if max_new_tokens < 1:
        raise LmjaxError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise LmjaxError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise LmjaxError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise LmjaxError(f"top_k must be >= 0 (0 = off), got {top_k}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise LmjaxError(f"prompt {i} is empty: give at least one token (or configure a BOS token)")
        bad = [t for t in p if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise LmjaxError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary [0, {cfg.vocab_size})")
        if len(p) + max_new_tokens > cfg.max_len:
            raise LmjaxError(
                f"prompt {i} ({len(p)} tokens) + max_new_tokens ({max_new_tokens}) = {len(p) + max_new_tokens} "
                f"exceeds the model's context of {cfg.max_len} tokens"
            )


def generate(model: Transformer, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_tokens: Sequence[int] = (), mesh=None, on_token=None) -> list[list[int]]:
    """Token-level sampling: prompts (lists of ids) -> the new ids of each row.

    A row stops after emitting one of `stop_tokens` (which is kept in its output). With a
    `mesh` (the one the params are sharded on), rows are split over its data axes when
    they divide evenly; heads follow the params' tensor sharding. `on_token(tokens, done)`
    (numpy [b] each) is called as every step finishes, for streaming.
    """
    check_request(model, prompts, max_new_tokens, temperature, top_k, top_p)
    n_rows = len(prompts)
    longest = max(len(p) for p in prompts)
    bucket = _bucket(longest, model.cfg.max_len)
    batch = np.zeros((len(prompts), bucket), np.int32)
    for i, p in enumerate(prompts):
        batch[i, : len(p)] = p
    lengths = np.array([len(p) for p in prompts], np.int32)
    stop_ids = np.array(list(stop_tokens) or [-1], np.int32)
    if mesh is not None:
        rows = sharding.batch_sharding(mesh)
        if len(prompts) % sharding.batch_divisor(mesh):
            rows = sharding.replicated(mesh)
        batch, lengths = jax.device_put(batch, rows), jax.device_put(lengths, rows)
    model, params = _decoding_form(model, params, n_rows)
    # Compiled once per (rows, prompt bucket, last cache span): a longer request than the
    # spans cover so far compiles one more program.
    last_span = _spans(bucket, model.cfg.max_len, longest + max_new_tokens)[-1]
    tokens, ends = _generate(
        model, params, jnp.asarray(batch), jnp.asarray(lengths), jnp.int32(max_new_tokens),
        jax.random.key(seed), jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.asarray(stop_ids),
        on_token, last_span,
    )
    tokens, ends = np.asarray(jax.device_get(tokens)), np.asarray(jax.device_get(ends))
    return [tokens[i, lengths[i]: ends[i]].tolist() for i in range(n_rows)]


def sample(params, model: Transformer, tokenizer, prompts: str | Sequence[str], *, max_new_tokens: int = 100,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
           stop_at_eos: bool = True, stream=None) -> list[str]:
    """Text in, text out: continue each prompt; an empty prompt starts from BOS.

    stream: a file-like object (e.g. sys.stdout) to which the first row's text is written
    as it is produced.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = []
    for text in prompts:
        encoded = tokenizer.encode(text)
        if not encoded:
            if tokenizer.bos_id is None:
                raise LmjaxError("empty prompt and the tokenizer has no BOS token to start from")
            encoded = [tokenizer.bos_id]
        ids.append(encoded)
    stops = [tokenizer.eos_id] if stop_at_eos and tokenizer.eos_id is not None else []
    printer = _StreamPrinter(tokenizer, stream) if stream is not None else None
    out = generate(model, params, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stops, on_token=printer)
    texts = [tokenizer.decode(o) for o in out]
    if printer is not None:  # whatever the printer held back (a trailing partial character)
        stream.write(texts[0][len(printer.shown):])
        stream.flush()
    return texts


class _StreamPrinter:
    """Writes row 0's new text as tokens arrive (decoding the whole row each time, so
    multi-byte characters split over tokens come out whole)."""

    def __init__(self, tokenizer, stream):
        self.tokenizer, self.stream, self.ids, self.shown = tokenizer, stream, [], ""

    def __call__(self, tokens, done):
        if done[0]:
            return
        self.ids.append(int(tokens[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its last byte
            return
        self.stream.write(text[len(self.shown):])
        self.stream.flush()
        self.shown = text
