"""lmjax.sae.dashboard: feature dashboards checked against brute force.

A tiny GPT-2-style model with O(1)-scale random parameters, a random ReLU SAE on the
residual stream (biases set so that features fire at different rates, one never) and a
random TopK transcoder (MLP input -> MLP output). Every number on a dashboard is
recomputed here in numpy from the hook activations: the top contexts are the largest
activations with their windows, the histogram counts every token, the interval samples lie
in their intervals, the logits are the decoder direction through the final norm's scale and
W_U. The JSON loads with circuit-tracer's own pydantic models, and the pages (the
dashboards, and `lmjax explain --dictionary`) render in headless Chromium with one card per
feature and no console output.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from circuit_tracer.frontend.feature_models import Model as CTFeature

from lmjax import commands
from lmjax.data.tokenizers import ByteTokenizer
from lmjax.errors import LmjaxError
from lmjax.interp import compiling
from lmjax.model import ModelConfig, Transformer
from lmjax.sae import dashboard, dashboard_html
from lmjax.sae.architectures import Dictionary

from _model_fixtures import FAST_COMPILE, GPT2, random_params

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-extensions", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]

CFG = ModelConfig(vocab_size=259, n_layer=2, d_model=32, n_head=4, d_mlp=64, max_len=32, **GPT2)
N_SEQ, SEQ = 19, 32  # 19 rows in batches of 16: the last batch is padded
# The defaults throughout, and 16 features in both dictionaries: `lmjax explain` (16 cards,
# rows of 32 tokens in batches of 16) then runs the programs that the fixture compiled.
WIDTH = TC_WIDTH = 16
KW = dict(top=10, n_intervals=5, per_interval=5, window=(10, 4), bins=40, fine=20, batch_size=16)


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    saved = dict(compiling.COMPILER_OPTIONS)
    compiling.COMPILER_OPTIONS.update(FAST_COMPILE)
    yield
    compiling.COMPILER_OPTIONS.clear()
    compiling.COMPILER_OPTIONS.update(saved)


@pytest.fixture(scope="module")
def setup():
    model, params = Transformer(CFG), random_params(CFG)
    tokens = np.random.RandomState(0).randint(0, 256, (N_SEQ, SEQ)).astype(np.int32)
    sae = Dictionary("relu", 32, WIDTH, hook_in="blocks.1.hook_resid_pre", input_scale=0.5, output_scale=0.5)
    sp = jax.jit(sae.init, compiler_options=FAST_COMPILE)(jax.random.key(1))  # one program, not one per op
    sp["W_enc"] = sp["W_enc"] * 10.0  # relu's decoder rows (and so its tied encoder) start at norm 0.1
    sp["b_enc"] = jnp.asarray(np.linspace(-1.5, 0.5, WIDTH), jnp.float32).at[0].set(-1e3)  # feature 0 never fires
    sp["b_dec"] = jnp.asarray(np.random.RandomState(2).normal(0, 0.1, 32), jnp.float32)
    tc = Dictionary("topk", 32, TC_WIDTH, k=3, hook_in="blocks.0.ln2.hook_normalized",
                    hook_out="blocks.0.hook_mlp_out", input_scale=1.3, output_scale=2.0)
    tp = jax.jit(tc.init, compiler_options=FAST_COMPILE)(jax.random.key(3))
    tp["b_enc"] = jnp.asarray(np.random.RandomState(4).normal(0, 0.3, TC_WIDTH), jnp.float32)
    tok = ByteTokenizer()
    return {"model": model, "params": params, "tokens": tokens, "tok": tok, "sae": (sae, sp), "tc": (tc, tp),
            "sae_dash": dashboard.compute(model, params, tok, sae, sp, tokens, **KW),
            "tc_dash": dashboard.compute(model, params, tok, tc, tp, tokens, **KW)}


def _hook(setup, name):
    """The hook's activations [n, t, d] by an independent run (numpy)."""
    model = setup["model"]
    run = jax.jit(lambda p, t: model.run_with_cache(p, t, [name])[1][name], compiler_options=FAST_COMPILE)
    return np.asarray(run(setup["params"], jnp.asarray(setup["tokens"])), np.float64)


def _brute_latents(setup, which):
    """The latents [n, t, width] in numpy: the formulas, not Dictionary.encode."""
    d, p = setup[which]
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = _hook(setup, d.hook_in).reshape(N_SEQ, SEQ, -1) * d.input_scale
    pre = ((x - p["b_dec"]) if d.b_dec_to_input else x) @ p["W_enc"] + p["b_enc"]
    f = np.maximum(pre, 0)
    if d.arch == "topk":
        kth = np.sort(pre, -1)[..., -d.k][..., None]
        f = f * (pre >= kth)
    return f


@pytest.fixture(scope="module")
def brute(setup):
    return {"sae": _brute_latents(setup, "sae"), "tc": _brute_latents(setup, "tc")}


@pytest.mark.parametrize("which", ["sae", "tc"])
def test_top_contexts_are_the_largest_activations(setup, brute, which):
    dash, f, tokens = setup[f"{which}_dash"], brute[which], setup["tokens"]
    assert [ft.index for ft in dash.features] == list(range(f.shape[-1]))
    np.testing.assert_allclose(dashboard.feature_activations(setup["model"], setup["params"], *setup[which], tokens),
                               f, atol=2e-5)
    left, right = KW["window"]
    for ft in dash.features:
        col = f[..., ft.index]
        expected = np.sort(col[col > 0])[::-1][:KW["top"]]
        np.testing.assert_allclose([c.value for c in ft.top], expected, rtol=1e-5, atol=1e-6)
        for c in ft.top:
            assert c.value == pytest.approx(col[c.row, c.position], rel=1e-5, abs=1e-6)
            assert c.start == max(0, c.position - left) and c.start + len(c.tokens) == min(SEQ, c.position + right + 1)
            assert c.tokens == tokens[c.row, c.start:c.start + len(c.tokens)].tolist()
            np.testing.assert_allclose(c.acts, col[c.row, c.start:c.start + len(c.tokens)], rtol=1e-5, atol=1e-6)
            assert c.acts[c.index] == c.value
        assert len({(c.row, c.position) for c in ft.top}) == len(ft.top)
    assert which != "sae" or (not dash[0].top and dash[0].n_fired == 0)  # the dead feature: no contexts


@pytest.mark.parametrize("which", ["sae", "tc"])
def test_histograms_count_every_token_and_intervals_hold_their_samples(setup, brute, which):
    dash, f = setup[f"{which}_dash"], brute[which]
    fired_somewhere = 0
    for ft in dash.features:
        col = f[..., ft.index]
        firing = col[col != 0]
        assert ft.n_tokens == N_SEQ * SEQ and ft.n_fired == firing.size
        assert int(ft.hist.sum()) + (ft.n_tokens - ft.n_fired) == ft.n_tokens  # every token counted once
        assert ft.frequency == pytest.approx(firing.size / col.size)
        if not firing.size:
            assert ft.act_max == 0 and not ft.intervals
            continue
        fired_somewhere += 1
        assert ft.act_max == pytest.approx(firing.max(), rel=1e-5) and ft.act_min == 0
        assert ft.act_mean == pytest.approx(firing.mean(), rel=1e-4)
        ref, _ = np.histogram(firing, bins=ft.hist_edges)
        assert np.abs(ref - ft.hist).sum() <= 2  # a value on a bin edge may fall either side in float32
        # percentiles from the fine histogram: within one fine bin of the exact ones
        fine_width = (ft.act_max - ft.act_min) / (KW["bins"] * KW["fine"])
        exact = np.quantile(firing, np.arange(1, 101) / 100, method="inverted_cdf")
        assert np.all(np.diff(ft.quantile_values) >= -1e-7)
        np.testing.assert_allclose(ft.quantile_values, exact, atol=1.01 * fine_width + 1e-6)
        # intervals: highest first, counts add up to the firing tokens, every sample inside its interval
        assert sum(iv.count for iv in ft.intervals) == firing.size
        assert [iv.hi for iv in ft.intervals] == sorted((iv.hi for iv in ft.intervals), reverse=True)
        assert ft.intervals[0].q_hi == pytest.approx(1.0) and ft.intervals[-1].q_lo == 0.0
        for iv in ft.intervals:
            inside = np.sum((firing > iv.lo - 1e-6) & (firing <= iv.hi + 1e-6))
            assert abs(inside - iv.count) <= 2
            assert len(iv.contexts) == min(KW["per_interval"], iv.count)
            assert len({(c.row, c.position) for c in iv.contexts}) == len(iv.contexts)
            for c in iv.contexts:
                assert iv.lo - 1e-6 <= c.value <= iv.hi + 1e-6 and c.value != 0
                assert c.value == pytest.approx(col[c.row, c.position], rel=1e-5, abs=1e-6)
    assert fired_somewhere >= f.shape[-1] // 2


def _numpy_logits(setup, which):
    d, p = setup[which]
    params = setup["params"]
    u = np.asarray(p["W_dec"], np.float64) / d.output_scale
    u = (u - u.mean(-1, keepdims=True)) * np.asarray(params["ln_final"]["scale"], np.float64)  # LayerNorm
    return u @ np.asarray(params["embed"], np.float64).T  # tied: W_U = embed^T


@pytest.mark.parametrize("which", ["sae", "tc"])
def test_top_logits_equal_a_direct_numpy_computation(setup, which):
    logits = _numpy_logits(setup, which)
    np.testing.assert_allclose(dashboard.logit_effects(setup["model"], setup["params"], *setup[which]), logits,
                               rtol=1e-4, atol=1e-5)
    for ft in setup[f"{which}_dash"].features:
        row = logits[ft.index]
        top, bottom = np.argsort(-row)[:10], np.argsort(row)[:10]
        assert [t for t, _ in ft.top_logits] == top.tolist()
        assert [t for t, _ in ft.bottom_logits] == bottom.tolist()
        np.testing.assert_allclose([v for _, v in ft.top_logits], row[top], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([v for _, v in ft.bottom_logits], row[bottom], rtol=1e-4, atol=1e-5)


def test_no_logits_off_the_residual_stream_and_one_line_errors(setup):
    model, params = setup["model"], setup["params"]
    inside = Dictionary("relu", 64, 8, hook_in="blocks.0.mlp.hook_post")
    top, bottom = dashboard.top_logits(model, params, inside, {"W_dec": np.ones((8, 64), np.float32)}, np.arange(8))
    assert top == bottom == [[]] * 8
    wrong = Dictionary("relu", 48, 8, hook_in="blocks.0.hook_resid_pre")
    with pytest.raises(LmjaxError, match=r"d_in=48.*shape \(32,\)"):
        dashboard.check_dictionary(model, params, wrong)
    sae, sp = setup["sae"]
    with pytest.raises(LmjaxError, match="latent indices"):
        dashboard.compute(model, params, setup["tok"], sae, sp, setup["tokens"], [WIDTH])


@pytest.mark.parametrize("which", ["sae", "tc"])
def test_json_loads_with_circuit_tracers_models(setup, which, tmp_path):
    dash = setup[f"{which}_dash"]
    paths = dashboard.write_circuit_tracer(dash, str(tmp_path / "features"))
    assert sorted(os.path.basename(p) for p in paths) == sorted(f"{f.index}.json" for f in dash.features)
    for ft in dash.features:
        with open(tmp_path / "features" / f"{ft.index}.json") as fh:
            m = CTFeature.model_validate(json.load(fh))
        assert m.index == ft.index and len(m.histogram) == KW["bins"] and len(m.quantile_values) == 100
        assert m.activation_frequency == pytest.approx(ft.frequency) and m.act_max == pytest.approx(ft.act_max)
        assert len(m.top_logits) == len(m.bottom_logits) == 10
        assert m.transcoder_id == ("blocks.1.hook_resid_pre" if which == "sae"
                                   else "blocks.0.ln2.hook_normalized->blocks.0.hook_mlp_out")
        groups = m.examples_quantiles
        assert groups[0].quantile_name == "Top activations" and len(groups) == 1 + len(ft.intervals)
        for g in groups:
            for e in g.examples:
                assert len(e.tokens) == len(e.tokens_acts_list) and 0 <= e.train_token_ind < len(e.tokens)
                assert e.tokens_acts_list[e.train_token_ind] != 0
        if ft.top:
            assert groups[0].examples[0].tokens_acts_list[groups[0].examples[0].train_token_ind] == ft.act_max
            assert not any(e.is_repeated_datapoint for e in groups[0].examples)
        shown = [(c.row, c.position) for c in ft.top + [c for iv in ft.intervals for c in iv.contexts]]
        flags = [e.is_repeated_datapoint for g in groups for e in g.examples]
        assert flags == [p in shown[:i] for i, p in enumerate(shown)]


def _chromium_dom(path):
    run = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", "file://" + os.path.abspath(path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    return run.stdout


def test_dashboard_page_renders_in_headless_chromium(setup, tmp_path):
    assert CHROMIUM, "no chromium on PATH (CI installs Debian's chromium in .ci/run)"
    dash = setup["sae_dash"]
    path = dashboard_html.write_html(dash, str(tmp_path / "features.html"))
    text = open(path, encoding="utf-8").read()
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<link" not in text  # nothing fetched
    assert text.count('class="fd-card"') == WIDTH and text.count("<svg") == sum(f.n_fired > 0 for f in dash.features)
    dom = _chromium_dom(path)
    assert 'data-rendered="ok"' in dom and f'data-cards="{WIDTH}"' in dom
    for ft in dash.features:
        assert f'id="f-{ft.index}"' in dom and f'href="#f-{ft.index}"' in dom
    assert f"Never fires on these {N_SEQ * SEQ} tokens" in dom
    # the transcoder page names its two sides
    tc_path = dashboard_html.write_html(setup["tc_dash"], str(tmp_path / "tc.html"))
    tc_text = open(tc_path, encoding="utf-8").read()
    assert tc_text.count('class="fd-card"') == TC_WIDTH and "input side: Top activations" in tc_text
    assert "Top logits of the decoder direction (output side)" in tc_text


def test_explain_gains_a_features_section(setup, tmp_path, monkeypatch):
    """`lmjax explain --dictionary DIR --feature_text FILE` end to end (the workdir stubbed
    with the tiny model): the section lists the features most active at the last position,
    embeds a card for each, and the page renders."""
    assert CHROMIUM, "no chromium on PATH (CI installs Debian's chromium in .ci/run)"
    from lmjax.sae.store import save_dictionary
    from lmjax.train import workdir

    model, params, tok = setup["model"], setup["params"], setup["tok"]
    sae, sp = setup["sae"]
    ddir = save_dictionary(str(tmp_path / "sae"), sae, sp)

    class Stub:
        def load(self, overrides=()):
            return model, params, tok

    monkeypatch.setattr(workdir, "open_workdir", lambda path: Stub())
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 30)  # > 16 rows of 31 tokens
    out = tmp_path / "report.html"
    prompt = "the cat sat on"
    assert commands.main(["explain", "--workdir", "stub", "--prompt", prompt, "--dictionary", ddir,
                          "--feature_text", str(text), "--features", "5", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert '<section id="features">' in page and '<a href="#features">Features</a>' in page
    # the listed features: the 5 largest latents at the last position (BOS first, as explain adds it)
    ids = [tok.bos_id] + tok.encode(prompt)
    f = dashboard.feature_activations(model, params, sae, sp, np.asarray([ids]))[0]
    pf = dashboard.prompt_features(model, params, tok, sae, sp, ids, top=5)
    assert [i for i, _ in pf.last] == [i for i in np.argsort(-f[-1])[:5].tolist() if f[-1, i] > 0]
    assert len(pf.per_position) == len(ids)
    cards = re.findall(r'class="fd-card" id="f-(\d+)"', page)
    assert {int(i) for i, _ in pf.last} <= {int(c) for c in cards} and len(cards) == len(set(cards))
    assert "On the prompt" in page and "Top activations" in page  # contexts from --feature_text
    dom = _chromium_dom(out)
    assert 'data-rendered="ok"' in dom and 'data-sections="7"' in dom
    # one-line errors: --feature_text without --dictionary
    assert commands.main(["explain", "--workdir", "stub", "--prompt", "x", "--feature_text", str(text)]) == 2
