"""Hugging Face import/export (lmjax.hf): exact parity with `transformers` on tiny random models.

Models are built with `transformers` from a config, their weights redrawn at O(0.1-1)
scale (so logits are large and greedy choices decisive), and `save_pretrained` to a temp
dir: no hub access. torch and transformers come with the `test` extra.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lmjax import sharding  # noqa: E402
from lmjax.hf import HFTokenizer, UnsupportedModel, export_hf, load_hf, load_params  # noqa: E402
from lmjax.data.safetensors_io import Checkpoint, write_file  # noqa: E402
from lmjax.model import Transformer  # noqa: E402
from lmjax.sample import generate  # noqa: E402

transformers.logging.set_verbosity_error()

GPT2 = dict(kind="gpt2", vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu_new",
            bos_token_id=0, eos_token_id=0)
LLAMA = dict(kind="llama", vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=5000.0,
             rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
QWEN2 = dict(kind="qwen2", vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)
# a sliding window longer than every sequence below (the import caps max_len at it)
MISTRAL = dict(kind="mistral", vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, sliding_window=40,
               rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
MAMBA = dict(kind="mamba", vocab_size=300, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
             conv_kernel=4, tie_word_embeddings=False)
CLASSES = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "llama": ("LlamaConfig", "LlamaForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
           "mamba": ("MambaConfig", "MambaForCausalLM")}


def _tiny_tokenizer(directory):
    """A byte-level BPE (GPT-2 style) trained on a few sentences, saved as HF files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog, déjà vu"] * 20, trainer)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)


def _make(directory, spec, seed=0):
    """A transformers model with O(1) random weights, saved to `directory`; returns it (eval mode)."""
    spec = dict(spec)
    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[spec.pop("kind")])
    torch.manual_seed(seed)
    model = model_cls(config_cls(**spec)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # norm scales near 1
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_((1.0 if p.ndim == 2 else 0.1) * torch.randn_like(p) / (p.shape[-1] ** 0.5 if p.ndim == 2 else 1))
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    out = {}
    for name, spec in (("gpt2", GPT2), ("llama", LLAMA), ("qwen2", QWEN2), ("mistral", MISTRAL), ("mamba", MAMBA)):
        d = str(tmp_path_factory.mktemp(name))
        out[name] = (d, _make(d, spec))
    _tiny_tokenizer(out["gpt2"][0])
    return out


def _prompts(vocab, batch=2, length=12, seed=0):
    return np.random.RandomState(seed).randint(0, vocab, (batch, length))


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "mistral", "mamba"])
def test_import_logits_hidden_states_and_greedy_generation(hf_models, name):
    directory, hf = hf_models[name]
    cfg, params, _ = load_hf(directory)
    model = Transformer(cfg)
    if name == "mistral":
        assert cfg.max_len == MISTRAL["sliding_window"]
    tokens = _prompts(cfg.vocab_size)
    # HF's hidden_states: the embeddings (not for Mamba), each layer's output, but the last
    # layer's replaced by the output of the final norm.
    offset = 0 if name == "mamba" else 1
    names = [f"blocks.{l}.hook_resid_post" for l in range(cfg.n_layer - offset)] + ["ln_final.hook_normalized"]
    logits, cache = model.run_with_cache(params, jnp.asarray(tokens), names)
    with torch.no_grad():
        out = hf(torch.tensor(tokens), output_hidden_states=True)
    ref = out.logits.numpy()
    assert np.abs(ref).max() > 2  # weights large enough that the comparison means something
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    assert len(out.hidden_states) == len(names) + offset
    for i, hook in enumerate(names):
        np.testing.assert_allclose(np.asarray(cache[hook]), out.hidden_states[i + offset].numpy(), atol=1e-4, rtol=0)
    if name == "qwen2":
        return  # same code path as llama for generation
    prompts = [list(tokens[0, :5]), list(tokens[1, :9])]
    ours = generate(model, params, prompts, max_new_tokens=20, temperature=0.0)
    hf.generation_config.eos_token_id = None  # 20 tokens, no early stop
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=20, do_sample=False, pad_token_id=0)
        assert got == want[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "mistral", "mamba"])
def test_export_then_from_pretrained_same_logits(hf_models, tmp_path, name):
    """Qwen2 leaves as a LlamaForCausalLM with every bias (the absent ones zero), Mistral as a
    LlamaForCausalLM (within its sliding window the same function): same logits."""
    directory, hf = hf_models[name]
    cfg, params, tokenizer = load_hf(directory)
    out = tmp_path / "exported"
    # a tiny shard limit: several files and an index, as for big models
    written = export_hf(str(out), cfg, params, tokenizer, max_shard_bytes=20_000)
    assert "model.safetensors.index.json" in written
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokens = _prompts(cfg.vocab_size, seed=1)
    if name in ("qwen2", "mistral"):
        assert type(again).__name__ == "LlamaForCausalLM"
        np.testing.assert_allclose(_hf_logits(again, tokens), _hf_logits(hf, tokens), atol=1e-5, rtol=0)
    else:
        np.testing.assert_array_equal(_hf_logits(again, tokens), _hf_logits(hf, tokens))  # same bits in and out
    _, params_again = load_params(str(out))  # and the sharded directory reads back
    jax.tree.map(np.testing.assert_array_equal, params_again, params)
    with pytest.raises(ValueError, match="not empty"):
        export_hf(str(out), cfg, params)


def test_sharded_and_scanned_imports_equal_plain(hf_models):
    """Each device reads only its slice (heads over `tensor`, d_model over `fsdp`, GPT-2's fused
    c_attn blocks); the assembled arrays equal a plain single-device import."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    for name in ("gpt2", "llama", "mamba"):
        directory, _ = hf_models[name]
        cfg, plain = load_params(directory)
        _, sharded = load_params(directory, mesh=mesh)
        if name != "mamba":
            q = sharded["blocks_0"]["attn"]["q"]["kernel"]
            assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
            assert len({tuple((s.start, s.stop) for s in shard.index) for shard in q.addressable_shards}) == 8
        jax.tree.map(np.testing.assert_array_equal, sharded, plain)
        scan_cfg, scanned = load_params(directory, mesh=mesh, scan_layers=True)
        for l in range(cfg.n_layer):
            jax.tree.map(lambda s, p, l=l: np.testing.assert_array_equal(s[l], p), scanned["blocks"]["block"],
                         plain[f"blocks_{l}"])
        tokens = jnp.asarray(_prompts(cfg.vocab_size))
        np.testing.assert_allclose(Transformer(scan_cfg).apply({"params": scanned}, tokens),
                                   Transformer(cfg).apply({"params": plain}, tokens), atol=1e-5)


def _copy_model(src, dst, *, drop=(), reshape=None, config=None):
    """Copy an HF directory's config and weights, dropping / replacing tensors or config keys."""
    os.makedirs(dst)
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f)
    hf.update(config or {})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(hf, f)
    with Checkpoint(src) as ckpt:
        arrays = {n: np.array(ckpt.view(n)) for n in ckpt.names() if n not in drop}
    arrays.update(reshape or {})
    write_file(os.path.join(dst, "model.safetensors"), [(n, a.shape, a.dtype) for n, a in arrays.items()],
               arrays.__getitem__)
    return dst


def test_clear_errors_before_anything_is_written(hf_models, tmp_path):
    from lmjax.commands import main

    llama, _ = hf_models["llama"]
    k = "model.layers.1.self_attn.k_proj.weight"
    cases = {
        "missing": (_copy_model(llama, tmp_path / "missing", drop=[k]), f"missing tensor '{k}'"),
        "shape": (_copy_model(llama, tmp_path / "shape", reshape={k: np.zeros((32, 32), np.float32)}),
                  rf"tensor '{k}' has shape \[32, 32\], but config.json implies \[16, 32\]"),
        "extra": (_copy_model(llama, tmp_path / "extra", reshape={"model.layers.0.self_attn.q_norm.weight":
                                                                  np.ones(8, np.float32)}), "unexpected tensor"),
        "arch": (_copy_model(llama, tmp_path / "arch", config={"architectures": ["BertForMaskedLM"]}),
                 "unsupported architecture.*BertForMaskedLM"),
        "rope": (_copy_model(llama, tmp_path / "rope", config={"rope_parameters": {
            "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}), "rope_type='llama3'"),
    }
    for what, (directory, message) in cases.items():
        with pytest.raises((ValueError, UnsupportedModel), match=message):
            load_params(str(directory))
        workdir = tmp_path / f"wd_{what}"
        assert main(["convert", "--from-hf", str(directory), "--workdir", str(workdir)]) == 2
        assert not workdir.exists()
        assert not [p for p in os.listdir(tmp_path) if ".convert-" in p]  # no temporary leftovers
    # lmjax models with no Hugging Face equivalent are refused before writing
    cfg, params, _ = load_hf(hf_models["gpt2"][0])
    with pytest.raises(UnsupportedModel, match="pos_embedding='learned' \\(Llama needs 'rope'\\)"):
        export_hf(str(tmp_path / "nope"), dataclasses.replace(cfg, norm="rmsnorm"), params)
    assert not (tmp_path / "nope").exists()


def test_cli_import_sample_export(hf_models, tmp_path, capsys):
    from lmjax.commands import main

    directory, hf = hf_models["gpt2"]
    workdir = tmp_path / "imported"
    assert main(["convert", "--from-hf", directory, "--workdir", str(workdir)]) == 0
    from lmjax.config import load_config
    from lmjax.train.checkpoint import Checkpointer
    from lmjax.train.loop import config_json

    with Checkpointer(str(workdir / "checkpoints")) as ckpt:  # the config file to fine-tune with is the checkpoint's
        assert config_json(load_config(str(workdir / "config.py"))) == ckpt.restore_meta()[0]
    assert main(["sample", "--workdir", str(workdir), "--prompt", "the quick", "--max_new_tokens", "8",
                 "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    tok = HFTokenizer.from_dir(directory)
    prompt = tok.encode("the quick")
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert "the quick" + tok.decode(want[0, len(prompt):].tolist()) in printed
    out = tmp_path / "hf_out"
    assert main(["convert", "--workdir", str(workdir), "--to-hf", str(out)]) == 0
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokens = _prompts(300, seed=2)
    np.testing.assert_array_equal(_hf_logits(again, tokens), _hf_logits(hf, tokens))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "the lazy fox, déjà"
    assert hf_tok.encode(text) == tok.encode(text)


def test_hf_tokenizer_protocol(hf_models):
    from lmjax.data.tokenizer_json import tokenizer_from_json

    directory, _ = hf_models["gpt2"]
    tok = HFTokenizer.from_dir(directory)
    ref = transformers.AutoTokenizer.from_pretrained(directory)
    text = "the quick brown fox — déjà vu 🦊"
    ids = tok.encode(text)
    assert ids == ref.encode(text) and tok.decode(ids) == text == ref.decode(ids)
    assert tok.bos_id == tok.eos_id == ref.eos_token_id and not tok.adds_bos
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    assert tok.token_bytes()[tok.eos_id] == 0
    again = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
    assert again.encode(text) == ids and again.vocab_size == tok.vocab_size and again.eos_id == tok.eos_id
    assert tok.encode(text, add_bos=True, add_eos=True) == [tok.bos_id, *ids, tok.eos_id]
    # an embedding padded past the tokenizer (300 rows, 257 ids): every model id decodes
    padded = HFTokenizer.from_dir(directory, {"vocab_size": 300})
    assert padded.vocab_size == 300 and padded.decode(ids + [299]) == text and padded.token_bytes()[299] == 0


@pytest.mark.parametrize("kind", ["byte", "char"])
def test_lmjax_tokenizers_export_as_tokenizer_json(tmp_path, kind):
    from lmjax.data.tokenizers import ByteTokenizer, CharTokenizer
    from lmjax.data.hf_tokenizer import write_tokenizer

    text = "def f(x):\n    return x  # é✓"
    tok = ByteTokenizer() if kind == "byte" else CharTokenizer.from_texts([text + "abc"])
    write_tokenizer(tok, str(tmp_path))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ids = tok.encode(text)
    assert ref.encode(text, add_special_tokens=False) == ids
    assert ref.decode(ids) == text
    assert ref.convert_tokens_to_ids([ref.bos_token, ref.eos_token, ref.pad_token]) == [tok.bos_id, tok.eos_id, tok.pad_id]


def test_safetensors_blocks_and_bfloat16(tmp_path):
    """Positioned reads of contiguous blocks and mapped reads of strided ones agree with NumPy,
    for bfloat16 too (which NumPy alone cannot name: ml_dtypes)."""
    import ml_dtypes

    arrays = {"a": np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4),
              "b": (np.arange(12).reshape(3, 4) / 7).astype(ml_dtypes.bfloat16)}
    path = str(tmp_path / "model.safetensors")
    write_file(path, [(n, a.shape, a.dtype) for n, a in arrays.items()], arrays.__getitem__)
    with Checkpoint(str(tmp_path)) as ckpt:
        for index in [(slice(1, 3),), (slice(2, 3), slice(1, 4)), (slice(0, 6), slice(1, 2)),
                      (slice(0, 6), slice(0, 5), slice(1, 3))]:
            np.testing.assert_array_equal(ckpt.read("a", index), arrays["a"][index])
        assert ckpt.read("b", (slice(0, 3), slice(1, 3))).dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(ckpt.read("b", (slice(1, 3),)), arrays["b"][1:3])
    safetensors_numpy = pytest.importorskip("safetensors.numpy")  # the reference reader agrees
    np.testing.assert_array_equal(safetensors_numpy.load_file(path)["a"], arrays["a"])


def test_config_mapping_mistral_window_and_qwen2(tmp_path):
    from lmjax.hf import import_config

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=100, max_position_embeddings=32768, rms_norm_eps=1e-5)
    for name, extra, max_len, use_bias in (
            ("mistral", dict(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=4096), 4096, False),
            ("qwen2", dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", sliding_window=4096,
                           use_sliding_window=False, tie_word_embeddings=True), 32768, True)):
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "config.json", "w") as f:
            json.dump({**base, **extra}, f)
        cfg = import_config(str(tmp_path / name))
        assert (cfg.max_len, cfg.use_bias, cfg.kv_heads, cfg.pos_embedding, cfg.mlp) == (max_len, use_bias, 2, "rope", "swiglu")


def test_bos_adding_tokenizer_and_sentencepiece_model(tmp_path):
    """A tokenizer.json whose post-processor adds BOS (as Llama's does): encode adds it too.
    A directory with only a sentencepiece tokenizer.model loads as lmjax's own tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from lmjax.data.tokenizers import SentencePieceTokenizer
    from lmjax.hf import load_tokenizer
    from lmjax.data.hf_tokenizer import write_tokenizer

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate("abcdefgh ")}}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    hf.add_special_tokens(["<s>", "</s>"])
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    hf.save(str(tmp_path / "tokenizer.json"))
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    tok = load_tokenizer(str(tmp_path))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.adds_bos and tok.encode("abc") == ref.encode("abc") == [0, 3, 4, 5]
    assert tok.encode("abc", add_bos=False) == [3, 4, 5] and tok.decode([0, 3, 4, 1]) == ref.decode([0, 3, 4, 1], skip_special_tokens=True)

    spm_dir = tmp_path / "spm"
    spm_dir.mkdir()
    spm = SentencePieceTokenizer.train(["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=300)
    assert write_tokenizer(spm, str(spm_dir)) == ["tokenizer.model"]
    loaded = load_tokenizer(str(spm_dir))
    assert isinstance(loaded, SentencePieceTokenizer) and loaded.encode("the fox") == spm.encode("the fox")


def _with_tokenizer(src, dst, tokenizer_config):
    """Copy src's tokenizer.json into dst, with the given tokenizer_config.json."""
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f, \
            open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as g:
        g.write(f.read())
    with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f)
    return str(dst)


def test_explain_eval_and_fine_tune_an_imported_model_and_bad_input(hf_models, tmp_path):
    """The README's promise for an imported model: `lmjax explain` and `lmjax eval` work on
    it, and `lmjax train --config OUT/config.py --workdir OUT` fine-tunes it (the loss
    falls). Then the import's and explain's bad input, each one line and exit code 2.
    All in one process on one CPU device (tests/_one_device.py)."""
    import html
    import re

    from _one_device import outputs, run_lmjax

    directory, hf = hf_models["gpt2"]
    tok = HFTokenizer.from_dir(directory)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog, déjà vu\n" * 400)
    # the same model with a tokenizer that has no BOS (nor does config.json name one)
    nobos = _with_tokenizer(directory, _copy_model(directory, tmp_path / "nobos", config={
        "bos_token_id": None, "eos_token_id": None}), {"tokenizer_class": "PreTrainedTokenizerFast"})
    truncated = _with_tokenizer(directory, _copy_model(directory, tmp_path / "truncated"), {})
    weights = os.path.join(truncated, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) - 1000)
    wd, report = str(tmp_path / "wd"), str(tmp_path / "report.html")
    data = [f"--config.data.source={text}", "--config.train.batch_size=8"]
    prompt, long_prompt = "the quick brown", "the quick brown fox " * 20
    commands = [
        ["convert", "--from-hf", directory, "--workdir", wd],
        ["explain", "--workdir", wd, "--prompt", prompt, "--out", report],
        ["eval", "--workdir", wd, "--batches", "2", *data],
        ["train", "--config", os.path.join(wd, "config.py"), "--workdir", wd, "--no_progress", *data,
         "--config.train.steps=6", "--config.optimizer.lr=3e-3", "--config.optimizer.warmup_steps=1",
         "--config.train.eval_every=6", "--config.train.eval_batches=2", "--config.train.sample_tokens=0"],
        ["eval", "--workdir", wd, "--batches", "2"],
        # bad input
        ["convert", "--from-hf", nobos, "--workdir", str(tmp_path / "wd_nobos")],
        ["explain", "--workdir", str(tmp_path / "wd_nobos"), "--prompt", "", "--out", str(tmp_path / "x.html")],
        ["explain", "--workdir", wd, "--prompt", long_prompt, "--out", str(tmp_path / "x.html")],
        ["explain", "--workdir", wd, "--prompt", prompt, "--target", " fox", "--contrast", " fox",
         "--out", str(tmp_path / "x.html")],
        ["convert", "--from-hf", directory, "--workdir", wd],
        ["convert", "--from-hf", truncated, "--workdir", str(tmp_path / "wd_truncated")]]
    codes, stdout, stderr = run_lmjax(*commands)
    out, err = outputs(stdout), outputs(stderr)
    assert codes[:6] == [0] * 6, stderr[-3000:]

    # explain: the token it explains is transformers' top prediction for the same tokens
    meta = json.loads(html.unescape(re.search(r'data-explain="([^"]*)"', open(report, encoding="utf-8").read())[1]))
    assert meta["tokens"] == [tok.bos_id] + tok.encode(prompt)
    assert meta["target"] == int(_hf_logits(hf, [meta["tokens"]])[0, -1].argmax())

    # eval prints a loss; 6 fine-tuning steps lower it on the text they train on
    def val_loss(printed, step):
        return float(re.search(rf"^step {step}: val_loss (\d+\.\d+)", printed, re.MULTILINE)[1])

    before, after = val_loss(out[2], 0), val_loss(out[4], 6)
    assert after < before - 0.5, (before, after)
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        assert [r["val_loss"] for r in map(json.loads, f) if "val_loss" in r] == [pytest.approx(after, abs=1e-4)]

    assert not os.path.exists(tmp_path / "wd_truncated")
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["0", "6"]  # the second import wrote nothing
    for i, message in ((6, "--prompt is empty and the tokenizer has no BOS token"),
                       (7, f"--prompt is {1 + len(tok.encode(long_prompt))} tokens (BOS included), longer than the "
                           "model's context of 64"),
                       (8, "the target and the contrast are the same token"),
                       (10, "model.safetensors: truncated: tensor"),
                       (9, "already holds checkpoints: import into a new --workdir")):
        lines = err[i].strip().splitlines()
        assert codes[i] == 2 and len(lines) == 1, err[i]
        assert lines[0].startswith(f"lmjax {commands[i][0]}: error: ") and message in lines[0], lines
