"""Tokenizers: byte, character and SentencePiece, behind one small protocol.

Every tokenizer can
- encode text to ids and decode ids back (special tokens are dropped on decode),
- say how many UTF-8 bytes each id contributes to decoded text (``token_bytes``), so a
  loss in nats per token converts exactly to bits per byte, comparable across tokenizers,
- serialise itself to a self-contained JSON dict, so a checkpoint carries its tokenizer.

``encode_array`` is an extra, vectorised fast path (returns an int64 numpy array) used by
the token-shard writer; ``encode`` is the same thing as a Python list; ``encode_batch``
(where a tokenizer has one) is ``encode_array`` of many texts at once.
"""
from __future__ import annotations

import base64
import io
import os
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np

from lmjax.errors import LmjaxError, MissingFileError

KINDS = ("byte", "char", "sentencepiece")
SP_MODEL_TYPES = ("bpe", "unigram")
_SP_TRAIN_THREADS = 8


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of lmjax may rely on from a tokenizer."""

    kind: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def token_bytes(self) -> np.ndarray: ...

    def to_json(self) -> dict: ...


def as_id_array(ids, vocab_size: int) -> np.ndarray:
    """Flatten list/array ids to int64 and reject ids outside the vocabulary."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = int(arr[(arr < 0) | (arr >= vocab_size)][0])
        raise LmjaxError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return arr


def _with_specials(ids: np.ndarray, bos: int | None, eos: int | None, add_bos: bool, add_eos: bool):
    if add_bos and bos is None:
        raise LmjaxError("add_bos=True but this tokenizer has no BOS token")
    if add_eos and eos is None:
        raise LmjaxError("add_eos=True but this tokenizer has no EOS token")
    if not (add_bos or add_eos):
        return ids
    parts = ([np.array([bos])] if add_bos else []) + [ids] + ([np.array([eos])] if add_eos else [])
    return np.concatenate(parts).astype(np.int64)


class ByteTokenizer:
    """UTF-8 bytes as tokens: id b is byte b; BOS=256, EOS=257, PAD=258.

    Needs no training and encodes every (surrogate-free) string losslessly.
    """

    kind = "byte"
    vocab_size = 259
    bos_id = 256
    eos_id = 257
    pad_id = 258

    def encode_array(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        # np.frombuffer keeps encoding a C-speed copy, not a Python loop per character.
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        return _with_specials(ids, self.bos_id, self.eos_id, add_bos, add_eos)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self.encode_array(text, add_bos=add_bos, add_eos=add_eos).tolist()

    def decode(self, ids) -> str:
        arr = as_id_array(ids, self.vocab_size)
        # A model may emit a sequence cut mid-character: replace, don't raise.
        return arr[arr < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        out[:256] = 1
        return out

    def to_json(self) -> dict:
        return {"kind": "byte"}

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class CharTokenizer:
    """Characters as tokens (nanoGPT's shakespeare_char): ids 0..n-1 are the sorted distinct
    characters, then BOS=n, EOS=n+1, PAD=n+2."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise LmjaxError(f"CharTokenizer characters must be 1-character strings, got {c!r}")
        if not chars:
            raise LmjaxError("CharTokenizer needs at least one character (was the training text empty?)")
        self.chars: tuple[str, ...] = tuple(chars)
        n = len(chars)
        self.bos_id, self.eos_id, self.pad_id = n, n + 1, n + 2
        self.vocab_size = n + 3
        # Sorted code points let encode look every character up with one searchsorted.
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.int64)
        self._char_array = np.array(chars, dtype=object)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(seen)

    def encode_array(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        # UTF-32 gives one fixed-width code point per character, decoded in C.
        cps = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4").astype(np.int64)
        ids = np.searchsorted(self._codepoints, cps)
        ok = ids < len(self._codepoints)
        ok[ok] = self._codepoints[ids[ok]] == cps[ok]
        if not ok.all():
            c = chr(int(cps[~ok][0]))
            raise LmjaxError(
                f"character {c!r} (U+{ord(c):04X}) is not in the char tokenizer's vocabulary of "
                f"{len(self.chars)} characters; build the tokenizer from text that contains it, "
                "or use the byte or sentencepiece tokenizer")
        return _with_specials(ids, self.bos_id, self.eos_id, add_bos, add_eos)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self.encode_array(text, add_bos=add_bos, add_eos=add_eos).tolist()

    def decode(self, ids) -> str:
        arr = as_id_array(ids, self.vocab_size)
        return "".join(self._char_array[arr[arr < len(self.chars)]])

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        out[: len(self.chars)] = [len(c.encode("utf-8", errors="surrogatepass")) for c in self.chars]
        return out

    def to_json(self) -> dict:
        return {"kind": "char", "chars": list(self.chars)}

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self.chars)} chars)"


class SentencePieceTokenizer:
    """A SentencePiece model (BPE or unigram), trained here or loaded from a ``.model`` file.

    Models trained by :meth:`train` use ids pad=0, unk=1, bos=2, eos=3, byte fallback (any
    string encodes, no unk), identity normalisation, no dummy prefix and no whitespace
    collapsing, so ``decode(encode(s)) == s`` for ordinary text. Caveat: the character
    U+2581 ("▁"), SentencePiece's own space marker, decodes to a plain space. Loaded models
    keep their own settings (e.g. NFKC normalisation or a dummy-prefix space), which can make
    round trips and ``token_bytes`` inexact.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm  # imported lazily: byte/char users never need it

        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size = int(self._sp.get_piece_size())
        # SentencePiece says -1 for "no such token"; the protocol says None.
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            (None if i < 0 else int(i))
            for i in (self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id(), self._sp.unk_id()))

    @classmethod
    def load(cls, model_path: str) -> "SentencePieceTokenizer":
        path = os.path.expanduser(model_path)
        if not os.path.isfile(path):
            raise MissingFileError(f"sentencepiece model_path {model_path!r} is not a file")
        with open(path, "rb") as f:
            return cls(f.read())

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int, model_type: str = "bpe",
              max_train_bytes: int = 50_000_000) -> "SentencePieceTokenizer":
        import sentencepiece as spm

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_training_lines(texts, max_train_bytes),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                # Exact round trips: no NFKC, no leading dummy space, keep repeated spaces
                # (indentation matters in code), and let runs of spaces be pieces.
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                character_coverage=1.0,
                max_sentence_length=1 << 20,
                # Fixed, not os.cpu_count(): unigram's result depends on the thread count,
                # and every model records it, so a machine-dependent value would change the
                # tokenizer (and the token-cache key) from one machine to the next.
                num_threads=_SP_TRAIN_THREADS,
                minloglevel=2,
            )
        except RuntimeError as e:
            # e.g. "Vocabulary size is too high": say which knob to turn.
            raise LmjaxError(f"sentencepiece training failed (vocab_size={vocab_size}, "
                             f"model_type={model_type!r}): {e}") from e
        return cls(model.getvalue())

    def encode_array(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        ids = np.asarray(self._sp.encode(text), dtype=np.int64)
        return _with_specials(ids, self.bos_id, self.eos_id, add_bos, add_eos)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """`encode_array` of each text, as one batch (sentencepiece's C++ loop)."""
        return [np.asarray(ids, dtype=np.int64) for ids in self._sp.encode(list(texts))]

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self.encode_array(text, add_bos=add_bos, add_eos=add_eos).tolist()

    def decode(self, ids) -> str:
        return self._sp.decode(as_id_array(ids, self.vocab_size).tolist())

    def token_bytes(self) -> np.ndarray:
        sp = self._sp
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if sp.is_control(i):
                continue  # bos/eos/pad decode to nothing
            if sp.is_byte(i):
                out[i] = 1
            elif sp.is_unknown(i):
                out[i] = len(sp.decode([i]).encode("utf-8"))
            else:
                out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def to_json(self) -> dict:
        return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode("ascii")}

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size})"


def _training_lines(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Documents -> non-blank lines (the trainer's "sentences"), stopping after max_bytes."""
    used = 0
    for doc in texts:
        for line in doc.splitlines():
            if not line.strip():
                continue
            used += len(line.encode("utf-8", errors="replace")) + 1
            if used > max_bytes:
                return
            yield line


def build_tokenizer(kind: str, *, texts: Callable[[], Iterable[str]] | None = None,
                    vocab_size: int | None = None, model_type: str = "bpe",
                    model_path: str | None = None, max_train_bytes: int = 50_000_000) -> Tokenizer:
    """Make a tokenizer of ``kind``.

    - ``byte``: fixed 259-id vocabulary; other arguments are ignored.
    - ``char``: the distinct characters of ``texts()``; ``vocab_size`` is ignored (it follows
      from the text).
    - ``sentencepiece``: load ``model_path`` if given, else train a ``model_type`` model with
      ``vocab_size`` ids on at most ``max_train_bytes`` of ``texts()``.
    """
    if kind not in KINDS:
        raise LmjaxError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    if model_type not in SP_MODEL_TYPES:
        raise LmjaxError(f"unknown sentencepiece model_type {model_type!r}; expected one of {SP_MODEL_TYPES}")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        if texts is None:
            raise LmjaxError("the char tokenizer is built from text: pass texts=<callable returning documents>")
        return CharTokenizer.from_texts(texts())
    if model_path is not None:
        return SentencePieceTokenizer.load(model_path)
    if texts is None:
        raise LmjaxError("training a sentencepiece tokenizer needs texts=<callable returning documents> "
                         "(or pass model_path=<file.model> to load one)")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size <= 0:
        raise LmjaxError(f"training a sentencepiece tokenizer needs a positive integer vocab_size, "
                         f"got {vocab_size!r} (byte fallback alone uses 260 ids, so try >= 300)")
    if max_train_bytes <= 0:
        raise LmjaxError(f"max_train_bytes must be positive, got {max_train_bytes!r}")
    return SentencePieceTokenizer.train(texts(), vocab_size=vocab_size, model_type=model_type,
                                        max_train_bytes=max_train_bytes)
