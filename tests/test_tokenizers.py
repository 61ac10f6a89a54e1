"""Tokenizers: exact round trips, byte accounting, serialisation, and clear errors."""
import os
import random
import sysconfig

import numpy as np
import pytest

from lmjax.data import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    tokenizer_from_json,
)

TRICKY = [
    "",
    "hello, world\n",
    "emoji 🎉👩‍👩‍👧 flags 🇫🇷",
    "CJK 日本語の文章と中文",
    "combining a\u0301 e\u0308 \u0915\u094d\u0937",
    "NUL \x00 and controls \x01\x7f\t\r\n",
    "rtl \u05e9\u05dc\u05d5\u05dd, zero-width \u200b\u200d, bom \ufeff",
    "astral \U0001d54f\U0010ffff",
]


def random_unicode(rng: random.Random, n: int) -> str:
    """Random code points from the whole range, surrogates excluded (they are not text)."""
    out = []
    while len(out) < n:
        cp = rng.randrange(0x110000)
        if not 0xD800 <= cp <= 0xDFFF:
            out.append(chr(cp))
    return "".join(out)


def stdlib_text(*names: str) -> str:
    root = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in names:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)


# ---------------------------------------------------------------- byte


@pytest.mark.parametrize("text", TRICKY)
def test_byte_roundtrip_tricky(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.uint16)) == text


def test_byte_roundtrip_random_unicode():
    tok = ByteTokenizer()
    rng = random.Random(0)
    for _ in range(200):
        text = random_unicode(rng, rng.randrange(0, 40))
        assert tok.decode(tok.encode(text)) == text


def test_byte_specials_and_decode():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    assert tok.encode("A", add_bos=True, add_eos=True) == [256, 65, 257]
    # specials are dropped wherever they appear
    assert tok.decode([256, 104, 258, 105, 257]) == "hi"
    # a sequence cut mid-character decodes with a replacement character, not an error
    assert tok.decode(list("é".encode())[:1] + [65]) == "\ufffdA"
    with pytest.raises(ValueError, match="259"):
        tok.decode([259])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


@pytest.mark.parametrize("text", TRICKY)
def test_byte_token_bytes_sum_is_utf8_length(text):
    tok = ByteTokenizer()
    tb = tok.token_bytes()
    assert tb.dtype == np.int32 and tb.shape == (259,)
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert tb[ids].sum() == len(text.encode("utf-8"))


# ---------------------------------------------------------------- char


def test_char_vocab_is_sorted_distinct_chars_then_specials():
    tok = build_tokenizer("char", texts=lambda: ["hello", "world!"])
    assert tok.chars == tuple(sorted(set("helloworld!")))
    n = len(tok.chars)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (n, n + 1, n + 2, n + 3)
    assert tok.encode("!dehl") == [0, 1, 2, 3, 4]


def test_char_roundtrip_and_token_bytes():
    texts = [t for t in TRICKY if t]
    tok = build_tokenizer("char", texts=lambda: texts)
    tb = tok.token_bytes()
    for text in texts:
        ids = tok.encode(text, add_bos=True, add_eos=True)
        assert tok.decode(ids) == text
        assert tok.decode(np.asarray(ids)) == text
        assert tb[ids].sum() == len(text.encode("utf-8"))
    # a recombined string of known chars also round-trips
    mixed = "".join(random.Random(1).choices("".join(texts), k=500))
    assert tok.decode(tok.encode(mixed)) == mixed


def test_char_unknown_character_is_named():
    tok = build_tokenizer("char", texts=lambda: ["abc"])
    with pytest.raises(ValueError, match=r"'z'.*U\+007A"):
        tok.encode("abz")


def test_char_json_roundtrip():
    tok = build_tokenizer("char", texts=lambda: ["To be, or not to be 🎭"])
    again = tokenizer_from_json(tok.to_json())
    assert isinstance(again, CharTokenizer)
    assert again.chars == tok.chars and again.vocab_size == tok.vocab_size
    assert again.encode("be or not") == tok.encode("be or not")


# ---------------------------------------------------------------- sentencepiece

SP_TRAIN_TEXT = stdlib_text("os.py", "json/decoder.py", "textwrap.py")
SP_SAMPLES = [
    "def f(x):\n    return x + 1\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
    "Ordinary prose, with punctuation: yes!  Two spaces.\tTab.",
    "Unicode via byte fallback: héllo 世界 🎉 a\u0301",
    stdlib_text("shlex.py")[:3000],  # held-out real text
]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_tok(request):
    return build_tokenizer("sentencepiece", texts=lambda: [SP_TRAIN_TEXT], vocab_size=400,
                           model_type=request.param)


def test_sp_ids_and_roundtrip(sp_tok):
    assert isinstance(sp_tok, SentencePieceTokenizer)
    assert isinstance(sp_tok, Tokenizer)
    assert (sp_tok.pad_id, sp_tok.unk_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 1, 2, 3)
    assert sp_tok.vocab_size == 400
    tb = sp_tok.token_bytes()
    for text in SP_SAMPLES:
        ids = sp_tok.encode(text)
        assert sp_tok.unk_id not in ids  # byte fallback: nothing is unknown
        assert sp_tok.decode(ids) == text
        assert tb[ids].sum() == len(text.encode("utf-8"))
    # it learned something: real code compresses below one token per byte
    assert len(sp_tok.encode(SP_SAMPLES[-1])) < 0.7 * len(SP_SAMPLES[-1].encode())


def test_sp_specials(sp_tok):
    ids = sp_tok.encode("abc", add_bos=True, add_eos=True)
    assert ids[0] == 2 and ids[-1] == 3
    assert sp_tok.decode(ids) == "abc"
    assert sp_tok.decode([0, 0] + ids) == "abc"
    assert sp_tok.token_bytes()[[0, 2, 3]].sum() == 0


def test_sp_json_and_model_file_roundtrip(sp_tok, tmp_path):
    again = tokenizer_from_json(sp_tok.to_json())
    path = tmp_path / "tok.model"
    path.write_bytes(sp_tok.model_proto)
    loaded = build_tokenizer("sentencepiece", model_path=str(path))
    for other in (again, loaded):
        assert other.vocab_size == sp_tok.vocab_size
        assert (other.bos_id, other.eos_id, other.pad_id) == (sp_tok.bos_id, sp_tok.eos_id, sp_tok.pad_id)
        np.testing.assert_array_equal(other.token_bytes(), sp_tok.token_bytes())
        for text in SP_SAMPLES:
            assert other.encode(text) == sp_tok.encode(text)


def test_sp_training_is_deterministic(sp_tok, request):
    # Same text and settings -> byte-identical model, so token-cache keys are reproducible.
    model_type = request.node.callspec.params["sp_tok"]
    again = build_tokenizer("sentencepiece", texts=lambda: [SP_TRAIN_TEXT], vocab_size=400, model_type=model_type)
    assert again.model_proto == sp_tok.model_proto


def test_sp_training_lines_respect_max_train_bytes():
    from lmjax.data.tokenizers import _training_lines

    lines = list(_training_lines([SP_TRAIN_TEXT] * 3, 5000))
    assert 0 < sum(len(x.encode()) + 1 for x in lines) <= 5000
    assert all(x.strip() and "\n" not in x for x in lines)  # blank lines dropped, no newlines
    assert lines == [x for x in SP_TRAIN_TEXT.splitlines() if x.strip()][: len(lines)]


def test_sp_max_train_bytes_caps_input():
    # The full text supports a 1000-piece unigram vocabulary; its first 300 bytes do not.
    big = [SP_TRAIN_TEXT] * 3
    assert build_tokenizer("sentencepiece", texts=lambda: big, vocab_size=1000,
                           model_type="unigram").vocab_size == 1000
    with pytest.raises(ValueError, match="vocab_size=1000"):
        build_tokenizer("sentencepiece", texts=lambda: big, vocab_size=1000, model_type="unigram",
                        max_train_bytes=300)


# ---------------------------------------------------------------- build_tokenizer


def test_build_byte():
    assert isinstance(build_tokenizer("byte"), ByteTokenizer)
    assert isinstance(tokenizer_from_json(build_tokenizer("byte").to_json()), ByteTokenizer)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="bytes"), r"'bytes'.*'byte', 'char', 'sentencepiece'"),
    (dict(kind="sentencepiece", texts=lambda: ["x"], vocab_size=300, model_type="wordpiece"),
     r"'wordpiece'.*'bpe', 'unigram'"),
    (dict(kind="sentencepiece", texts=lambda: ["x"]), "vocab_size"),
    (dict(kind="sentencepiece", vocab_size=300), "texts"),
    (dict(kind="char"), "texts"),
    (dict(kind="char", texts=lambda: []), "at least one character"),
])
def test_build_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_tokenizer(**kwargs)


def test_build_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        build_tokenizer("sentencepiece", model_path=str(tmp_path / "nope.model"))


def test_from_json_unknown_kind():
    with pytest.raises(ValueError, match="'hf'"):
        tokenizer_from_json({"kind": "hf"})
