"""Scaling-law fits recover known laws; the fit command rejects bad CSVs; size counts the tree."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from lmjax.commands import main
from lmjax.scaling import fits

TRUE = {"E": 1.8, "A": 450.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}


def law(N, D, p=TRUE):
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def synthetic_runs(noise=0.002, seed=0):
    """A grid of sizes x tokens with multiplicative noise on the loss."""
    rng = np.random.default_rng(seed)
    N, D = (x.ravel() for x in np.meshgrid(np.logspace(7, 10, 8), np.logspace(9, 12, 8)))
    return N, D, law(N, D) * np.exp(rng.normal(0, noise, N.shape))


# A coarser grid of starts than Hoffmann et al.'s 4500 keeps the test fast; it still spans
# the same box.
SMALL_GRID = {"alpha": np.array([0.0, 1.0]), "beta": np.array([0.0, 1.0]), "e": np.array([0.0, 1.0]),
              "a": np.array([0.0, 10.0]), "b": np.array([0.0, 10.0])}


def test_approach3_recovers_a_known_law():
    """Tolerance: 0.2% noise on 64 runs -> exponents within 0.02, E within 2%."""
    N, D, L = synthetic_runs()
    fit = fits.fit_parametric(N, D, L, grid=SMALL_GRID, bootstrap=20)
    assert abs(fit.alpha - TRUE["alpha"]) < 0.02 and abs(fit.beta - TRUE["beta"]) < 0.02, fit
    assert abs(fit.E / TRUE["E"] - 1) < 0.02, fit
    lo, hi = fit.intervals["alpha"]
    assert lo <= fit.alpha <= hi and hi - lo < 0.1
    # compute-optimal allocation is where the fitted loss is lowest at fixed compute
    C = 1e21
    n_opt, d_opt = fit.compute_optimal(C)
    assert np.isclose(6 * n_opt * d_opt, C)
    for factor in (0.5, 2.0):
        assert fit.predict(n_opt, d_opt) < fit.predict(n_opt * factor, d_opt / factor)


def test_approach2_recovers_the_optimal_size_exponent():
    """IsoFLOP profiles drawn from the law: N_opt ~ C^(beta / (alpha + beta))."""
    N, D, C = [], [], []
    for budget in np.logspace(18, 21, 4):
        n_star = fits.ParametricFit(**TRUE, objective=0, n_points=0, delta=0, starts=0, wall_s=0).compute_optimal(budget)[0]
        for n in n_star * np.logspace(-0.6, 0.6, 7):
            N.append(n), D.append(budget / (6 * n)), C.append(budget)
    N, D = np.array(N), np.array(D)
    allocation = fits.fit_isoflop(N, D, law(N, D))
    expected = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert abs(allocation.n_law.exponent - expected) < 0.02, (allocation.n_law, expected)
    assert abs(allocation.n_law.exponent + allocation.d_law.exponent - 1) < 1e-6  # C = 6 N D
    envelope = fits.fit_envelope(N, D, law(N, D), bins_per_decade=1)
    assert abs(envelope.n_law.exponent - expected) < 0.1
    windowed = fits.fit_isoflop(N, D, law(N, D), window=5)  # the 5 sizes around each budget's best
    assert abs(windowed.n_law.exponent - expected) < 0.02
    one_sided = N > np.repeat(allocation.N_opt, 7) * 1.5  # only sizes above each optimum
    with pytest.raises(ValueError, match="outside the sizes fitted|not convex"):
        fits.fit_isoflop(N[one_sided], D[one_sided], law(N, D)[one_sided])
    spread = fits.isoflop_leave_one_out(N, D, law(N, D))
    assert spread["refits"] == len(N)  # 7 sizes per budget: any one can go
    assert spread["a"][0] <= allocation.n_law.exponent <= spread["a"][1]
    assert spread["a"][1] - spread["a"][0] < 0.02


def test_approach2_reads_d_opt_from_the_runs_when_c_is_not_6nd():
    """With C counting more than 6N per token (attention, the head), D = C / flops(N), not
    C / (6N): D_opt must be the tokens the optimal run would really get."""
    def flops(n):
        return 6 * n + 3e3 * np.sqrt(n)  # an extra term that shrinks relative to 6N with size

    N, D, C = [], [], []
    for budget in np.logspace(11, 13, 3):
        for n in np.logspace(3, 5.5, 9):
            N.append(n), D.append(budget / flops(n)), C.append(budget)
    N, D, C = map(np.array, (N, D, C))
    allocation = fits.fit_isoflop(N, D, law(N, D, {**TRUE, "A": 20.0, "B": 200.0}), C)
    for budget, n_opt, d_opt in zip(allocation.C, allocation.N_opt, allocation.D_opt):
        assert np.isclose(d_opt, budget / flops(n_opt), rtol=0.02), (d_opt, budget / flops(n_opt))
        assert budget / (6 * n_opt) > 1.2 * d_opt  # what C / 6N would have said


def test_kaplan_power_law():
    N = np.logspace(6, 9, 10)
    result = fits.fit_kaplan(N, (8.8e13 / N) ** 0.076)
    assert np.isclose(result["alpha"], 0.076) and np.isclose(result["x_c"], 8.8e13, rtol=1e-6)


@pytest.mark.parametrize("rows, columns, message", [
    ([{"N": 1e8, "D": 1e9, "loss": 3.0}] * 10, ["N", "D"], "missing column"),
    ([{"N": 1e8, "D": 1e9, "loss": -1.0}] * 10, ["N", "D", "loss"], "not positive"),
    ([{"N": 1e8, "D": 1e9, "loss": 3.0}] * 3, ["N", "D", "loss"], "too few"),
    ([{"N": "big", "D": 1e9, "loss": 3.0}] * 10, ["N", "D", "loss"], "not a number"),
])
def test_fit_rejects_bad_csv(tmp_path, capsys, rows, columns, message):
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "fit.json"
    assert main(["scaling", "fit", str(path), "--approach", "3", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_fit_cli_writes_json_and_plots(tmp_path):
    N, D, L = synthetic_runs()
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["params", "tokens", "val_loss"])
        writer.writerows(zip(N, D, L))
    out = tmp_path / "fit.json"
    argv = ["scaling", "fit", str(path), "--approach", "kaplan_n", "--n", "params", "--d", "tokens",
            "--loss", "val_loss", "--out", str(out)]
    assert main(argv) == 0 and out.exists()


def test_size_counts_the_parameter_tree():
    """The conventions' counts add up on the real tree (quickstart config)."""
    import jax

    from lmjax.config import load_config, model_config
    from lmjax.model import Transformer
    from lmjax.model.accounting import count_params
    from lmjax.model.accounting import size_report

    cfg = model_config(load_config("configs/quickstart.py", []), 259)
    report = size_report(cfg, cfg.max_len)
    params = Transformer(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    assert report["params_total"] == count_params(params)
    tables = cfg.vocab_size * cfg.d_model + cfg.max_len * cfg.d_model  # tied: the head is the embedding
    assert report["params_non_embedding"] == report["params_total"] - tables
    assert report["params_non_embedding_with_head"] - report["params_non_embedding"] == cfg.vocab_size * cfg.d_model


def test_vocab_size_of_is_the_size_of_the_tokenizer_training_builds(tmp_path, capsys):
    """Counted from the data, not assumed: a char tokenizer has the text's distinct
    characters plus BOS, EOS and PAD."""
    import json

    from conftest import data_file
    from lmjax.config import load_config
    from lmjax.data.tokenizers import ByteTokenizer, CharTokenizer
    from lmjax.scaling.sweeps import vocab_size_of

    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    path = tmp_path / "small.txt"
    path.write_text(text)
    config = load_config("configs/scaling/cpu_isoflop.py", [f"data.source={path}"])
    assert config.data.tokenizer == "char"
    assert vocab_size_of(config) == CharTokenizer.from_texts([text]).vocab_size == len(set(text)) + 3
    config.data.tokenizer = "byte"
    assert vocab_size_of(config) == ByteTokenizer.vocab_size
    config.model.vocab_size = 300
    assert vocab_size_of(config) == 300  # an explicit model.vocab_size wins
    # the shipped char config on tinyshakespeare, through the command
    shakespeare = data_file("tinyshakespeare", "input.txt")
    assert main(["scaling", "size", "--config", "configs/scaling/cpu_isoflop.py"]) == 0
    report = json.loads(capsys.readouterr().out)
    with open(shakespeare, encoding="utf-8") as f:
        assert report["vocab_size"] == len(set(f.read())) + 3


TINY = ["model.max_len=32", "train.batch_size=8", "train.eval_every=1000", "train.eval_batches=2",
        "train.sample_tokens=0", "train.log_every=5", "checkpoint.every=100"]


def test_sweep_runner_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path):
    from lmjax.scaling import sweeps
    from lmjax.train.loop import train

    runs = sweeps.grid_plan([25_000], [8 * 32 * 6, 8 * 32 * 10], tokens_per_step=8 * 32)
    assert [r["steps"] for r in runs] == [6, 10] and runs[0]["n_layer"] == 2
    plan = {"config": "configs/quickstart.py", "overrides": TINY, "runs": runs}
    calls = []

    def interrupting(config, workdir, **kw):  # the second run is "preempted" at step 5
        calls.append(workdir)
        return train(config, workdir, stop_at_step=5 if len(calls) == 2 else None, **kw)

    rows = sweeps.run_sweep(plan, str(tmp_path), say=lambda s: None, train_fn=interrupting)
    assert len(rows) == 1 and len(calls) == 2

    starts = []

    def recording(config, workdir, **kw):
        summary = train(config, workdir, **kw)
        starts.append((os.path.basename(workdir), summary["start_step"]))
        return summary

    rows = sweeps.run_sweep(plan, str(tmp_path), say=lambda s: None, train_fn=recording)
    assert starts == [(runs[1]["name"], 5)]  # the finished run is skipped, the other resumes
    with open(tmp_path / "runs.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == [r["name"] for r in runs]
    assert all(float(r["final_val_loss"]) > 0 and float(r["best_val_loss"]) <= float(r["final_val_loss"]) for r in table)
    for r in table:  # every run finished by the runner carries its emergence probes
        assert 0 <= float(r["induction_score"]) <= 1 and r["induction_head"].startswith("L")
        assert np.isfinite(float(r["icl_score"])) and np.isfinite(float(r["copy_gain"]))


def test_isoflop_plan_and_launch_commands():
    from lmjax.scaling import sweeps

    runs = sweeps.isoflop_plan([3e12, 1e14], 4, tokens_per_step=2048)
    for budget in (3e12, 1e14):
        members = [r for r in runs if r["name"].startswith(f"C{budget:.2g}_")]
        shapes = {(r["n_layer"], r["d_model"]) for r in members}
        assert len(shapes) == len(members) >= 3  # distinct sizes around the optimum
        for r in members:  # compute within one step's rounding of the budget
            assert abs(r["C"] / budget - 1) < 6 * r["N"] * 2048 / budget + 1e-9
            assert r["d_model"] % r["n_head"] == 0 and r["n_layer"] >= 2
    # PaLM FLOPs: each run's C is what lmjax train counts for its shape, D = C / that
    from lmjax.config import load_config, model_config
    from lmjax.model.accounting import flops_per_token
    from lmjax.scaling.sweeps import palm_flops

    config = load_config("configs/scaling/cpu_isoflop.py", [])
    palm = sweeps.isoflop_plan([1e12], 5, tokens_per_step=4096, spread=16, tokens_per_param=300,
                               flops_per_token=palm_flops(config))
    assert len({r["d_model"] for r in palm}) == 5 and min(r["d_model"] for r in palm) < 64  # head dim 8 widths
    for r in palm:
        config.model.n_layer, config.model.d_model, config.model.n_head = r["n_layer"], r["d_model"], r["n_head"]
        fpt = flops_per_token(model_config(config, sweeps.vocab_size_of(config)), config.model.max_len)
        assert fpt > 6 * r["N"] and np.isclose(r["C"], fpt * r["D"])
        assert abs(r["C"] / 1e12 - 1) < fpt * 4096 / 1e12 + 1e-9

    # explicit widths per budget: the shape rule's heads at each width, D from the budget
    explicit = sweeps.isoflop_plan_widths([1e12, 3e12], [[8, 16, 24], [16, 24, 64]], tokens_per_step=4096)
    assert [(r["d_model"], r["n_head"]) for r in explicit] == [(8, 1), (16, 2), (24, 3), (16, 2), (24, 3), (64, 4)]
    assert sweeps.shape_for(12 * 2 * 63**2) == sweeps.shape_of_width(64)  # one shape per width
    with pytest.raises(ValueError, match="multiple of the head dimension"):
        sweeps.shape_of_width(20)
    with pytest.raises(ValueError, match="at least 3 distinct widths"):
        sweeps.isoflop_plan_widths([1e12], [[8, 16, 16]], tokens_per_step=4096)

    plan = {"config": "configs/x.py", "overrides": ["data.source=gs://b/c.txt"], "runs": runs[:1]}
    (plain,) = sweeps.launch_commands(plan, "gs://b/sweep")
    assert plain.startswith("lmjax train --config configs/x.py --workdir gs://b/sweep/" + runs[0]["name"])
    assert "--config.data.source=gs://b/c.txt" in plain and f"--config.train.steps={runs[0]['steps']}" in plain
    (pod,) = sweeps.launch_commands(plan, "gs://b/sweep", "python launch/tpu_pod.py run --name s --zone z")
    assert pod.startswith("python launch/tpu_pod.py run --name s --zone z --workdir gs://b/sweep/")
    assert " -- --config." in pod


class _Copier:
    """A stub model whose logits put all mass on the token `lag` positions back from the
    one it predicts (a perfect copier for sequences of period `lag`), uniform before that."""

    def __init__(self, vocab: int, lag: int):
        import types

        self.cfg, self.lag = types.SimpleNamespace(vocab_size=vocab), lag

    def apply(self, variables, tokens):
        import jax
        import jax.numpy as jnp

        t = tokens.shape[1]
        src = np.arange(t) + 1 - self.lag  # position i predicts token i + 1 = token i + 1 - lag
        copied = 20.0 * jax.nn.one_hot(tokens[:, np.clip(src, 0, None)], self.cfg.vocab_size)
        return jnp.where((src >= 0)[None, :, None], copied, 0.0)


def test_probes_measure_what_context_buys():
    """A copier of period-40 text gains log(vocab) late in the context (ICL score), and on
    r + r predicts the second copy perfectly (copy gain log(vocab)); a context-blind
    (uniform) model scores 0 on both. An off-by-one in the positions would break both."""
    from lmjax.scaling import probes

    vocab, period = 50, 40
    stream = np.tile(np.random.RandomState(0).randint(0, vocab, period), 100)
    uniform = np.log(vocab)
    assert np.isclose(probes.icl_score(_Copier(vocab, period), {}, stream, seq_len=128), -uniform, atol=1e-3)
    assert np.isclose(probes.copy_gain(_Copier(vocab, 30), {}, n=30, vocab_range=(0, vocab)), uniform, atol=1e-3)
    blind = _Copier(vocab, 10_000)  # nothing to copy: uniform everywhere
    assert abs(probes.icl_score(blind, {}, stream, seq_len=128)) < 1e-6
    assert abs(probes.copy_gain(blind, {}, n=30, vocab_range=(0, vocab))) < 1e-6
    with pytest.raises(ValueError, match="seq_len must be >= 32"):
        probes.icl_score(blind, {}, stream, seq_len=16)
