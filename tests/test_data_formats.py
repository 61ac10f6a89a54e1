"""Record formats (lmjax/data/formats.py): the same documents in every format give the same token
shards; llm.c token shards round-trip; every malformed input is a one-line error naming the file
and record (or is skipped and counted), and leaves the cache as it was; batch tokenization in
worker processes gives the same tokens."""
import gzip
import json
import os

import numpy as np
import pytest

from lmjax.data import (
    ByteTokenizer,
    MalformedRecordError,
    prepare_tokens,
    read_token_shard,
    text_source,
    write_token_shard,
)
from lmjax.data import encode
from lmjax.data.hf_tokenizer import HFTokenizer
from lmjax.errors import LmjaxError

DOCS = [f"Document {i}: the {'quick' if i % 2 else 'lazy'} fox — naïve café 世界 {i * 7}.\n" + "line\n" * (i % 4)
        for i in range(40)] + ["", "  indented\r\n\ttabs and \"quotes\" \\ backslash\n"]


@pytest.fixture(scope="module")
def gpt2_style(tmp_path_factory):
    """A GPT-2-style byte-level BPE tokenizer.json, trained here on the test documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS, trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return HFTokenizer(path.read_text(), eos_id=tok.token_to_id("<|endoftext|>"))


def write_formats(root, docs, key="text"):
    """The documents as txt files, jsonl (plain, .gz, .zst), a JSON array, parquet, and a
    datasets.save_to_disk directory: {format: data.source spec}."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root.mkdir(parents=True, exist_ok=True)
    txt = root / "txt"
    txt.mkdir()
    for i, d in enumerate(docs):
        (txt / f"{i:04d}.txt").write_bytes(d.encode("utf-8"))
    lines = b"".join(json.dumps({key: d, "id": i}).encode() + b"\n" for i, d in enumerate(docs))
    (root / "c.jsonl").write_bytes(lines)
    (root / "c.jsonl.gz").write_bytes(gzip.compress(lines))
    half = len(lines) // 2
    cut = lines.index(b"\n", half) + 1  # two zstd frames, as pzstd writes: both must be read
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines[:cut])
                                       + zstandard.ZstdCompressor().compress(lines[cut:]))
    (root / "c.json").write_text(json.dumps([{key: d} for d in docs]))
    pq.write_table(pa.table({"id": list(range(len(docs))), key: docs}), root / "c.parquet", row_group_size=7)
    datasets.Dataset.from_dict({key: docs}).save_to_disk(str(root / "saved"))
    return {"txt": txt, "jsonl": root / "c.jsonl", "jsonl.gz": root / "c.jsonl.gz", "jsonl.zst": root / "c.jsonl.zst",
            "json": root / "c.json", "parquet": root / "c.parquet", "save_to_disk": root / "saved"}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    return write_formats(tmp_path_factory.mktemp("formats"), DOCS)


def shard_bytes(data):
    return {f: open(os.path.join(data.meta["dir"], f), "rb").read() for f in ("train.bin", "val.bin")}


@pytest.mark.parametrize("tok_name", ["gpt2_style", "byte"])
def test_every_format_gives_identical_token_shards(corpora, tmp_path, request, tok_name):
    tok = request.getfixturevalue(tok_name) if tok_name != "byte" else ByteTokenizer()
    shards = {}
    for fmt, spec in corpora.items():
        data = prepare_tokens(text_source(str(spec)), tok, str(tmp_path), progress=False)
        assert data.meta["n_documents"] == len(DOCS), fmt
        shards[fmt] = shard_bytes(data)
    assert all(s == shards["txt"] for s in shards.values()), [f for f, s in shards.items() if s != shards["txt"]]
    expected = [i for d in DOCS for i in tok.encode(d) + [tok.eos_id]]
    data = prepare_tokens(text_source(str(corpora["jsonl.zst"])), tok, str(tmp_path), progress=False)
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), expected)


def test_saved_dataset_dict_names_its_splits(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]}),
                          "test": datasets.Dataset.from_dict({"text": ["b"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(LmjaxError, match=r"DatasetDict.*dd/train.*dd/test|DatasetDict.*dd/test.*dd/train"):
        text_source(str(tmp_path / "dd"))
    assert len(text_source(str(tmp_path / "dd" / "train")).paths) == 1


def test_text_key_and_dolma_style_json_gz(tmp_path):
    lines = "".join(json.dumps({"content": d, "text": 5}) + "\n" for d in DOCS[:5])
    (tmp_path / "part-0.json.gz").write_bytes(gzip.compress(lines.encode()))  # Dolma: jsonl named .json.gz
    src = text_source(str(tmp_path / "*.json.gz"), text_key="content")
    assert list(src.documents()) == DOCS[:5]
    other = text_source(str(tmp_path / "*.json.gz"))
    assert other.fingerprint() != src.fingerprint()  # the text field is part of the cache key
    with pytest.raises(MalformedRecordError, match=r"part-0.json.gz: record 1: field 'text' is int, expected a string"):
        list(other.documents())


def test_bin_token_shards_round_trip(tmp_path):
    small = np.random.default_rng(0).integers(0, 259, size=3000).astype(np.uint16)
    wide = np.array([0, 70_000, 2**32 - 1, 5], np.uint64)
    write_token_shard(str(tmp_path / "a_000.bin"), small)
    write_token_shard(str(tmp_path / "wide.bin"), wide)
    head = np.fromfile(tmp_path / "a_000.bin", dtype="<i4", count=256)
    assert head[:3].tolist() == [20240520, 1, 3000] and os.path.getsize(tmp_path / "a_000.bin") == 1024 + 2 * 3000
    assert np.fromfile(tmp_path / "wide.bin", dtype="<i4", count=1)[0] == 20240801
    np.testing.assert_array_equal(read_token_shard(str(tmp_path / "a_000.bin")), small)
    np.testing.assert_array_equal(read_token_shard(str(tmp_path / "wide.bin")), wide)
    # A source of shards enters the cache as it is (no tokenizing, no EOS added), in file order.
    write_token_shard(str(tmp_path / "a_001.bin"), small[::-1])
    data = prepare_tokens(text_source(str(tmp_path / "a_*.bin")), ByteTokenizer(), str(tmp_path / "cache"),
                          progress=False)
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), np.concatenate([small, small[::-1]]))
    assert data.meta["n_bytes_train"] + data.meta["n_bytes_val"] == int((small < 256).sum()) * 2
    # ... and only with a tokenizer whose vocabulary holds its ids.
    write_token_shard(str(tmp_path / "a_002.bin"), np.array([1, 300]))
    with pytest.raises(LmjaxError, match=r"a_002.bin: token shard holds id 300, outside .*\[0, 259\)"):
        prepare_tokens(text_source(str(tmp_path / "a_*.bin")), ByteTokenizer(), str(tmp_path / "cache"),
                       progress=False)


def _malformed(tmp_path):
    """{case: (file written, the error's text)}."""
    good = [json.dumps({"text": d}) for d in DOCS[:6]]
    cases = {}

    def jsonl(name, lines):
        (tmp_path / name).write_text("\n".join(lines) + "\n")

    jsonl("bad_json.jsonl", good[:2] + ['{"text": "unterminated'] + good[2:])
    cases["bad_json"] = ("bad_json.jsonl", r"bad_json.jsonl: record 3: not valid JSON")
    jsonl("missing.jsonl", good[:4] + [json.dumps({"body": "x", "id": 1})] + good[4:])
    cases["missing_text"] = ("missing.jsonl", r"missing.jsonl: record 5: no 'text' field \(its fields: 'body', 'id'\)")
    jsonl("not_string.jsonl", good[:1] + [json.dumps({"text": ["a", "b"]})] + good[1:])
    cases["non_string"] = ("not_string.jsonl", r"not_string.jsonl: record 2: field 'text' is list, expected a string")
    packed = gzip.compress(("\n".join(good * 400) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    cases["truncated_gzip"] = ("cut.jsonl.gz", r"cut.jsonl.gz: record \d+: the compressed stream is truncated")
    import zstandard

    packed = zstandard.ZstdCompressor().compress(("\n".join(good * 4000) + "\n").encode())  # > 1 block of 128 KB
    (tmp_path / "cut.jsonl.zst").write_bytes(packed[: len(packed) // 2])
    cases["truncated_zstd"] = ("cut.jsonl.zst", r"cut.jsonl.zst: record \d+: the compressed stream is truncated")
    write_token_shard(str(tmp_path / "magic.bin"), np.arange(10))
    with open(tmp_path / "magic.bin", "r+b") as f:
        f.write(np.int32(12345).tobytes())
    cases["bin_magic"] = ("magic.bin", r"magic.bin: token shard magic 12345 is not llm.c's 20240520 \(uint16 tokens\)")
    write_token_shard(str(tmp_path / "short.bin"), np.arange(10))
    with open(tmp_path / "short.bin", "r+b") as f:
        f.truncate(1024 + 2 * 7)
    cases["bin_length"] = ("short.bin", r"short.bin: token shard header says 10 uint16 tokens .* holds 14 bytes")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS[:3]}), tmp_path / "nocol.parquet")
    cases["parquet_column"] = ("nocol.parquet", r"nocol.parquet: record 1: no column 'text' \(columns: body\)")
    return cases


CASES = ["bad_json", "missing_text", "non_string", "truncated_gzip", "truncated_zstd", "bin_magic", "bin_length",
         "parquet_column"]


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_is_one_line_error_and_cache_unchanged(tmp_path, case):
    name, message = _malformed(tmp_path)[case]
    cache = tmp_path / "cache"
    prepare_tokens(text_source(str(tmp_path / "bad_json.jsonl"), skip_malformed=True), ByteTokenizer(), str(cache),
                   progress=False)  # an entry already there must survive untouched
    before = {p: os.path.getmtime(os.path.join(cache, p)) for p in os.listdir(cache)}
    with pytest.raises(LmjaxError, match=message) as err:
        prepare_tokens(text_source(str(tmp_path / name)), ByteTokenizer(), str(cache), progress=False)
    assert "\n" not in str(err.value) and str(tmp_path / name) in str(err.value)
    assert "skip_malformed" in str(err.value)  # says how to go on
    assert {p: os.path.getmtime(os.path.join(cache, p)) for p in os.listdir(cache)} == before


@pytest.mark.parametrize("case", CASES)
def test_malformed_records_skipped_and_counted(tmp_path, case):
    name, _ = _malformed(tmp_path)[case]
    src = text_source(str(tmp_path / name), skip_malformed=True)
    if case.startswith(("bin", "parquet")):  # the whole file is unreadable: nothing is left to train on
        with pytest.raises(LmjaxError, match="no text"):
            prepare_tokens(src, ByteTokenizer(), str(tmp_path / "cache"), progress=False)
        return
    data = prepare_tokens(src, ByteTokenizer(), str(tmp_path / "cache"), progress=False)
    assert data.meta["n_skipped"] == 1
    if not case.startswith("truncated"):
        tok = ByteTokenizer()
        expected = [i for d in DOCS[:6] for i in tok.encode(d) + [tok.eos_id]]
        np.testing.assert_array_equal(np.concatenate([data.train, data.val]), expected)
        assert data.meta["n_documents"] == 6


def test_worker_processes_give_the_same_tokens(corpora, gpt2_style, tmp_path, monkeypatch, capsys):
    """Batches tokenized in 2 forked workers (forced on a small corpus) equal the in-process
    ones, for a Hugging Face and a byte tokenizer; the progress bar is in bytes with tokens/s."""
    monkeypatch.setattr(encode, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("lmjax.data.shards._CHUNK_CHARS", 200)  # many chunks, so order matters
    monkeypatch.setattr("lmjax.data.shards.PROGRESS_MIN_BYTES", 0)
    for tok in (gpt2_style, ByteTokenizer()):
        src = text_source(str(corpora["jsonl"]))
        one = prepare_tokens(src, tok, str(tmp_path / "one"), progress=False, workers=1)
        two = prepare_tokens(src, tok, str(tmp_path / "two"), progress=True, workers=2)
        assert shard_bytes(one) == shard_bytes(two)
    err = capsys.readouterr().err
    assert "tokenizing" in err and "tokens/s" in err and "B/s" in err


def test_encoder_errors_come_back_from_workers(monkeypatch):
    monkeypatch.setattr(encode, "PARALLEL_MIN_BYTES", 0)

    class Narrow(ByteTokenizer):
        vocab_size = 100  # bytes >= 100 are outside

    with encode.Encoder(Narrow(), np.uint16, workers=2, total_bytes=1) as enc:
        assert enc.workers == 2
        with pytest.raises(LmjaxError, match=r"produced id \d+, outside its vocabulary \[0, 100\)"):
            list(enc.map([(["abc"], 0), (["\u00ff"], 1)]))
