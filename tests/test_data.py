"""Text sources, cached token shards, and stateless batches."""
import os

import numpy as np
import pytest

from lmjax.data import (
    ByteTokenizer,
    TextSource,
    build_tokenizer,
    eval_batches,
    num_eval_batches,
    prepare_tokens,
    text_source,
    train_batch,
)
from lmjax.data.shards import cache_key


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


@pytest.fixture
def corpus(tmp_path):
    """A small directory tree with hidden entries that must be skipped."""
    root = tmp_path / "corpus"
    write(root / "b.txt", "second file\n")
    write(root / "a.txt", "first file: héllo 世界\n")
    write(root / "sub" / "c.md", "# third\r\nwith CRLF\r\n")
    write(root / ".hidden.txt", "skip me")
    write(root / ".git" / "config", "skip me too")
    return root


# ---------------------------------------------------------------- sources


def test_source_file(corpus):
    src = text_source(str(corpus / "a.txt"))
    assert src.paths == (str(corpus / "a.txt"),)
    assert list(src.documents()) == ["first file: héllo 世界\n"]
    assert src.total_bytes() == len("first file: héllo 世界\n".encode())


def test_source_directory_sorted_recursive_skips_hidden(corpus):
    src = text_source(str(corpus))
    assert src.name == str(corpus)
    assert src.paths == tuple(str(corpus / p) for p in ("a.txt", "b.txt", "sub/c.md"))
    # text is what is on disk: no newline translation
    assert list(src.documents())[2] == "# third\r\nwith CRLF\r\n"


def test_source_globs(corpus):
    assert text_source(str(corpus / "*.txt")).paths == (str(corpus / "a.txt"), str(corpus / "b.txt"))
    assert text_source(str(corpus / "**" / "*.md")).paths == (str(corpus / "sub" / "c.md"),)
    assert text_source(str(corpus / "[ab].txt")).paths == text_source(str(corpus / "?.txt")).paths


def test_source_tilde_expansion(corpus, monkeypatch):
    monkeypatch.setenv("HOME", str(corpus))
    assert text_source("~/b.txt").paths == (str(corpus / "b.txt"),)


def test_source_relative_paths_become_absolute(corpus, monkeypatch):
    monkeypatch.chdir(corpus)
    assert text_source("b.txt").paths == (str(corpus / "b.txt"),)


def test_source_invalid_utf8_is_replaced(tmp_path):
    f = write(tmp_path / "bad.txt", b"ok \xff\xfe end")
    assert list(text_source(str(f)).documents()) == ["ok \ufffd\ufffd end"]


@pytest.mark.parametrize("spec", ["does/not/exist.txt", "no_such_dir/*.txt", "empty_dir"])
def test_source_missing_is_a_clear_error(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"(?s)" + spec.replace("*", r"\*") + ".*stdlib.*glob"):
        text_source(spec)


def test_source_fingerprint_tracks_files(corpus):
    src = text_source(str(corpus))
    fp = src.fingerprint()
    assert fp == text_source(str(corpus)).fingerprint() and len(fp) == 64
    write(corpus / "b.txt", "second file, edited\n")
    assert text_source(str(corpus)).fingerprint() != fp
    write(corpus / "d.txt", "new")
    assert len(text_source(str(corpus)).paths) == 4


def test_source_stdlib():
    src = text_source("stdlib")
    assert src.name == "stdlib"
    assert len(src.paths) > 500
    assert list(src.paths) == sorted(src.paths)
    assert all(p.endswith(".py") for p in src.paths)
    names = {os.path.basename(p) for p in src.paths}
    assert {"os.py", "json", "__init__.py"} & names == {"os.py", "__init__.py"}
    parts = {part for p in src.paths for part in p.split(os.sep)}
    assert not parts & {"site-packages", "dist-packages", "__pycache__"}
    assert src.total_bytes() > 10_000_000


# ---------------------------------------------------------------- prepare_tokens


def test_prepare_tokens_single_file_split(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak. 🎭\n" * 20
    src = text_source(str(write(tmp_path / "input.txt", text)))
    tok = ByteTokenizer()
    data = prepare_tokens(src, tok, str(tmp_path / "cache"), progress=False)
    stream = tok.encode(text) + [tok.eos_id]
    n_train = int(len(stream) * 0.9)  # nanoGPT's first 90% / last 10%
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    np.testing.assert_array_equal(data.train, stream[:n_train])
    np.testing.assert_array_equal(data.val, stream[n_train:])
    m = data.meta
    assert (m["n_tokens_train"], m["n_tokens_val"]) == (n_train, len(stream) - n_train)
    assert m["n_bytes_train"] + m["n_bytes_val"] == len(text.encode())
    assert m["n_bytes_val"] == len(tok.decode(data.val).encode())
    assert m["source"] == src.name and m["fingerprint"] == src.fingerprint()
    assert (m["tokenizer_kind"], m["vocab_size"], m["dtype"], m["val_fraction"]) == ("byte", 259, "uint16", 0.1)
    assert m["cached"] is False
    assert data.val_tokens_per_byte == pytest.approx(m["n_tokens_val"] / m["n_bytes_val"])


def test_prepare_tokens_documents_in_order_with_eos(corpus, tmp_path):
    src = text_source(str(corpus))
    tok = build_tokenizer("char", texts=src.documents)
    data = prepare_tokens(src, tok, str(tmp_path / "cache"), val_fraction=0.25, progress=False)
    stream = np.concatenate([data.train, data.val])
    expected = [i for doc in src.documents() for i in tok.encode(doc) + [tok.eos_id]]
    np.testing.assert_array_equal(stream, expected)
    assert len(data.train) == int(len(expected) * 0.75)
    assert data.meta["n_documents"] == 3


class WideTokenizer(ByteTokenizer):
    """Bytes shifted above 65535, to force uint32 storage."""

    vocab_size = 70_000
    eos_id = 69_999
    bos_id = pad_id = None

    def encode_array(self, text, **kw):
        return super().encode_array(text) + 65_600

    def token_bytes(self):
        tb = np.zeros(self.vocab_size, np.int32)
        tb[65_600:65_856] = 1
        return tb

    def to_json(self):
        return {"kind": "wide-test"}


def test_prepare_tokens_uint32_for_big_vocab(corpus, tmp_path):
    data = prepare_tokens(text_source(str(corpus / "a.txt")), WideTokenizer(), str(tmp_path), progress=False)
    assert data.train.dtype == np.uint32 and data.meta["dtype"] == "uint32"
    assert data.train.max() > 65_535
    expected = [b + 65_600 for b in "first file: héllo 世界\n".encode()] + [69_999]
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), expected)


def test_prepare_tokens_cache_hit_does_not_retokenize(corpus, tmp_path, monkeypatch):
    src, tok, cache = text_source(str(corpus)), ByteTokenizer(), str(tmp_path / "cache")
    first = prepare_tokens(src, tok, cache, progress=False)
    files = {f: os.stat(os.path.join(first.meta["dir"], f)).st_mtime_ns for f in os.listdir(first.meta["dir"])}

    def boom(*a, **k):
        raise AssertionError("re-tokenized on a cache hit")

    monkeypatch.setattr(ByteTokenizer, "encode_array", boom)
    second = prepare_tokens(src, tok, cache, progress=False)
    assert second.meta["cached"] is True and second.meta["dir"] == first.meta["dir"]
    assert isinstance(second.train, np.memmap)
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)
    assert {f: os.stat(os.path.join(first.meta["dir"], f)).st_mtime_ns for f in files} == files
    assert sorted(os.listdir(cache)) == [first.meta["key"]]  # no temp dirs left behind


def test_prepare_tokens_key_changes_with_inputs(corpus, tmp_path):
    src, tok = text_source(str(corpus)), ByteTokenizer()
    base = cache_key(src, tok, 0.1)
    assert cache_key(src, tok, 0.2) != base
    assert cache_key(src, build_tokenizer("char", texts=src.documents), 0.1) != base
    write(corpus / "a.txt", "changed")
    assert cache_key(text_source(str(corpus)), tok, 0.1) != base


def test_prepare_tokens_ignores_leftover_temp_dir(corpus, tmp_path):
    src, tok, cache = text_source(str(corpus)), ByteTokenizer(), tmp_path / "cache"
    key = cache_key(src, tok, 0.1)
    # A writer that crashed midway leaves a partial temp dir, even one with a meta.json.
    crashed = cache / f".{key}.tmp-crashed"
    write(crashed / "train.bin", b"\x00\x00" * 3)
    write(crashed / "meta.json", "{}")
    data = prepare_tokens(src, tok, str(cache), progress=False)
    assert data.meta["cached"] is False
    expected = [i for doc in src.documents() for i in tok.encode(doc) + [tok.eos_id]]
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), expected)


class CrashingTokenizer(ByteTokenizer):
    def __init__(self, crash_at):
        self.calls, self.crash_at = 0, crash_at

    def encode_array(self, text, **kw):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().encode_array(text)


def test_prepare_tokens_crash_leaves_no_entry(corpus, tmp_path):
    src, cache = text_source(str(corpus)), tmp_path / "cache"
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_tokens(src, CrashingTokenizer(crash_at=2), str(cache), progress=False)
    assert os.listdir(cache) == []
    assert prepare_tokens(src, ByteTokenizer(), str(cache), progress=False).meta["cached"] is False


class RacingTokenizer(ByteTokenizer):
    """While tokenizing, another 'process' finishes the same cache entry first."""

    def __init__(self, cache):
        self.cache, self.raced = cache, False

    def encode_array(self, text, **kw):
        if not self.raced:
            self.raced = True
            self.rival = prepare_tokens(self.source, ByteTokenizer(), self.cache, progress=False)
        return super().encode_array(text)


def test_prepare_tokens_concurrent_writer_loses_gracefully(corpus, tmp_path):
    src, cache = text_source(str(corpus)), str(tmp_path / "cache")
    tok = RacingTokenizer(cache)
    tok.source = src
    data = prepare_tokens(src, tok, cache, progress=False)
    assert tok.rival.meta["cached"] is False
    assert data.meta["dir"] == tok.rival.meta["dir"]
    np.testing.assert_array_equal(data.train, tok.rival.train)
    assert os.listdir(cache) == [data.meta["key"]]


@pytest.mark.parametrize("vf", [0, 1, -0.1, 1.5, True, "0.1"])
def test_prepare_tokens_bad_val_fraction(corpus, tmp_path, vf):
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_tokens(text_source(str(corpus)), ByteTokenizer(), str(tmp_path), val_fraction=vf)


def test_prepare_tokens_empty_source(tmp_path):
    src = text_source(str(write(tmp_path / "empty.txt", "")))
    with pytest.raises(ValueError, match="no text"):
        prepare_tokens(src, ByteTokenizer(), str(tmp_path / "cache"), progress=False)
    assert os.listdir(tmp_path / "cache") == []
    with pytest.raises(ValueError, match="no text"):
        prepare_tokens(TextSource("nothing", ()), ByteTokenizer(), str(tmp_path / "cache"), progress=False)


def test_prepare_tokens_stdlib_bytes(tmp_path):
    """The embedded default corpus, end to end with the byte tokenizer (about a second)."""
    src = text_source("stdlib")
    data = prepare_tokens(src, ByteTokenizer(), str(tmp_path), progress=False)
    n_bytes = sum(len(doc.encode("utf-8")) for doc in src.documents())
    m = data.meta
    assert m["n_bytes_train"] + m["n_bytes_val"] == n_bytes
    assert m["n_tokens_train"] + m["n_tokens_val"] == n_bytes + len(src.paths)  # one EOS per file
    assert int(data.val[-1]) == ByteTokenizer.eos_id
    assert 0.09 < m["n_tokens_val"] / (m["n_tokens_train"] + m["n_tokens_val"]) < 0.11


# ---------------------------------------------------------------- train_batch


def test_train_batch_windows_and_shift():
    tokens = np.arange(1000, dtype=np.uint16)
    b = train_batch(tokens, seed=0, step=3, batch_size=8, seq_len=16)
    assert b["inputs"].shape == b["targets"].shape == (8, 16)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32
    np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)  # contiguous windows, shifted by one
    np.testing.assert_array_equal(np.diff(b["inputs"], axis=1), 1)


def test_train_batch_is_pure_and_keyed_by_seed_and_step():
    tokens = np.random.default_rng(0).integers(0, 259, size=5000).astype(np.uint16)
    kw = dict(batch_size=4, seq_len=32)
    a = train_batch(tokens, seed=1, step=7, **kw)
    for s in range(7):  # stepping through earlier batches changes nothing
        train_batch(tokens, seed=1, step=s, **kw)
    np.random.seed(123)  # nor does the global numpy RNG
    b = train_batch(tokens, seed=1, step=7, **kw)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], train_batch(tokens, seed=1, step=8, **kw)["inputs"])
    assert not np.array_equal(a["inputs"], train_batch(tokens, seed=2, step=7, **kw)["inputs"])


def test_train_batch_process_slices_union_is_global_batch():
    tokens = np.arange(10_000, dtype=np.uint32)
    full = train_batch(tokens, seed=5, step=2, batch_size=8, seq_len=8)
    for count in (2, 4, 8):
        parts = [train_batch(tokens, seed=5, step=2, batch_size=8, seq_len=8, process_index=i,
                             process_count=count) for i in range(count)]
        assert all(p["inputs"].shape == (8 // count, 8) for p in parts)
        for k in ("inputs", "targets"):
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])


def test_train_batch_offsets_cover_whole_range():
    seq_len, n = 4, 12
    tokens = np.arange(n, dtype=np.uint16)
    starts = np.concatenate([train_batch(tokens, seed=0, step=s, batch_size=16, seq_len=seq_len)["inputs"][:, 0]
                             for s in range(20)])
    # every window start in [0, n - seq_len - 1] appears; none beyond (the last target is token n-1)
    assert set(starts.tolist()) == set(range(n - seq_len))
    only = train_batch(tokens[: seq_len + 1], seed=0, step=0, batch_size=2, seq_len=seq_len)
    np.testing.assert_array_equal(only["targets"], [[1, 2, 3, 4]] * 2)


def test_train_batch_on_memmap(corpus, tmp_path):
    data = prepare_tokens(text_source(str(corpus)), ByteTokenizer(), str(tmp_path), progress=False)
    b = train_batch(data.train, seed=0, step=0, batch_size=2, seq_len=8)
    assert b["inputs"].dtype == np.int32 and not isinstance(b["inputs"], np.memmap)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=6, process_count=4), "divisible"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(process_index=-1), "process_index"),
    (dict(seq_len=100), r"50 tokens.*101"),
    (dict(batch_size=0), "batch_size"),
    (dict(seed=-1), "seed"),
])
def test_train_batch_errors(kwargs, match):
    args = dict(seed=0, step=0, batch_size=4, seq_len=8) | kwargs
    with pytest.raises(ValueError, match=match):
        train_batch(np.arange(50), **args)


# ---------------------------------------------------------------- eval_batches


def test_eval_batches_in_order_non_overlapping():
    seq_len, bs, n = 8, 3, 100
    tokens = np.arange(n, dtype=np.uint16)
    batches = list(eval_batches(tokens, batch_size=bs, seq_len=seq_len))
    assert len(batches) == num_eval_batches(n, batch_size=bs, seq_len=seq_len) == (n - 1) // seq_len // bs == 4
    inputs = np.concatenate([b["inputs"] for b in batches]).reshape(-1)
    targets = np.concatenate([b["targets"] for b in batches]).reshape(-1)
    # consecutive windows: each position is an input once and a target once
    np.testing.assert_array_equal(inputs, np.arange(len(inputs)))
    np.testing.assert_array_equal(targets, np.arange(1, len(inputs) + 1))
    assert all(b["inputs"].shape == (bs, seq_len) and b["inputs"].dtype == np.int32 for b in batches)
    # deterministic
    again = list(eval_batches(tokens, batch_size=bs, seq_len=seq_len))
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(batches, again))


def test_eval_batches_exact_fit_and_max_batches():
    tokens = np.arange(2 * 4 * 5 + 1)  # exactly 2 batches of 4 windows of 5
    assert len(list(eval_batches(tokens, batch_size=4, seq_len=5))) == 2
    assert len(list(eval_batches(tokens[:-1], batch_size=4, seq_len=5))) == 1
    assert len(list(eval_batches(tokens, batch_size=4, seq_len=5, max_batches=1))) == 1
    assert list(eval_batches(tokens, batch_size=4, seq_len=5, max_batches=0)) == []


def test_eval_batches_too_short():
    with pytest.raises(ValueError, match=r"10 tokens.*seq_len \+ 1 = 17"):
        list(eval_batches(np.arange(10), batch_size=1, seq_len=16))
    with pytest.raises(ValueError, match=r"only 2 windows.*batch_size 4"):
        list(eval_batches(np.arange(40), batch_size=4, seq_len=16))
