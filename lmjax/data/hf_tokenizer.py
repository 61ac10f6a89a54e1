"""Hugging Face tokenizers behind lmjax's tokenizer protocol, and lmjax tokenizers as HF files.

`HFTokenizer` wraps a `tokenizer.json` (the `tokenizers` library; no transformers, no
torch) so that a checkpoint carries it like any lmjax tokenizer (`to_json`, and
`lmjax.data.tokenizer_json.tokenizer_from_json` rebuilds it for kind "hf").

One deliberate difference from lmjax's own tokenizers: `encode(text)` adds the BOS token
when the model's tokenizer does so itself (Llama's post-processor does, GPT-2's does not),
because such models are trained on, and expect, prompts that start with it; pass
`add_bos=False` to opt out.

`write_tokenizer` writes the files `transformers.AutoTokenizer.from_pretrained` reads:
an imported tokenizer as it came, and lmjax's byte and char tokenizers as an equivalent
`tokenizer.json` (same ids, same text), so a model trained in lmjax can leave with its
tokenizer. A sentencepiece tokenizer leaves as its `tokenizer.model`.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from lmjax.data.tokenizers import ByteTokenizer, CharTokenizer, SentencePieceTokenizer, as_id_array
from lmjax.errors import LmjaxError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPM_MODEL = "tokenizer.model"
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (visible bytes as
    themselves, the others shifted past 255), so byte strings can live in a JSON vocabulary."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
               *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in visible:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _token_text(value) -> str | None:
    """A tokenizer_config special-token entry (a string or {"content": ...}) -> its text."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _uses_byte_level(node) -> bool:
    """Whether a tokenizer.json decoder (possibly a Sequence) contains a ByteLevel step."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel":
        return True
    return any(_uses_byte_level(n) for n in node.get("decoders") or [])


class HFTokenizer:
    """A `tokenizer.json` tokenizer with the ids of its BOS / EOS / PAD tokens."""

    kind = "hf"

    def __init__(self, tokenizer_json: str, config: dict | None = None, *, bos_id=None, eos_id=None, pad_id=None,
                 vocab_size: int | None = None):
        """`vocab_size`: the model's, when its embedding has more rows than the tokenizer has
        ids (padded, as many checkpoints are): those ids are valid and decode to nothing."""
        from tokenizers import Tokenizer

        self.tokenizer_json = tokenizer_json
        self.config = dict(config or {})
        self._tok = Tokenizer.from_str(tokenizer_json)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.n_tokens = max(vocab.values()) + 1 if vocab else 0  # ids the tokenizer itself knows
        self.vocab_size = max(self.n_tokens, vocab_size or 0)

        def special(key, given):
            if given is not None:
                return int(given)
            text = _token_text(self.config.get(key))
            return self._tok.token_to_id(text) if text is not None else None

        self.bos_id = special("bos_token", bos_id)
        self.eos_id = special("eos_token", eos_id)
        self.pad_id = special("pad_token", pad_id)
        # Does the tokenizer's own post-processor put BOS in front? (Llama: yes; GPT-2: no.)
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        self.adds_bos = self.bos_id is not None and len(full) > len(plain) and full[0] == self.bos_id

    @classmethod
    def from_dir(cls, directory: str, model_config: dict | None = None) -> "HFTokenizer":
        """Load `tokenizer.json` (+ `tokenizer_config.json`); ids the tokenizer config does not
        name fall back to config.json's bos/eos/pad_token_id, and the vocabulary is padded to
        config.json's vocab_size."""
        with open(os.path.join(directory, TOKENIZER_JSON), encoding="utf-8") as f:
            text = f.read()
        config = {}
        path = os.path.join(directory, TOKENIZER_CONFIG)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        model_config = model_config or {}
        padded = model_config.get("vocab_size")
        tok = cls(text, config, vocab_size=padded if isinstance(padded, int) else None)
        for attr, key in (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"), ("pad_id", "pad_token_id")):
            value = model_config.get(key)
            if getattr(tok, attr) is None and isinstance(value, int) and 0 <= value < tok.vocab_size:
                setattr(tok, attr, value)
        if tok.bos_id is not None and not tok.adds_bos:
            tok.adds_bos = bool(config.get("add_bos_token", False))
        return tok

    def encode_array(self, text: str, *, add_bos: bool | None = None, add_eos: bool = False) -> np.ndarray:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos is None:
            add_bos = self.adds_bos
        if add_bos:
            if self.bos_id is None:
                raise LmjaxError("add_bos=True but this tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        if add_eos:
            if self.eos_id is None:
                raise LmjaxError("add_eos=True but this tokenizer has no EOS token")
            ids = ids + [self.eos_id]
        return np.asarray(ids, dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """`encode_array` of each text, tokenized as one batch in Rust (no offsets computed)."""
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # _fast: tokenizers >= 0.21
        bos = [self.bos_id] if self.adds_bos else []
        return [np.asarray(bos + e.ids, dtype=np.int64) for e in batch(texts, add_special_tokens=False)]

    def encode(self, text: str, *, add_bos: bool | None = None, add_eos: bool = False) -> list[int]:
        """Text -> ids; `add_bos=None` adds BOS exactly when the model's tokenizer does."""
        return self.encode_array(text, add_bos=add_bos, add_eos=add_eos).tolist()

    def decode(self, ids) -> str:
        ids = as_id_array(ids, self.vocab_size)
        return self._tok.decode(ids[ids < self.n_tokens].tolist(), skip_special_tokens=True)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id contributes to decoded text (special tokens: 0)."""
        out = np.zeros(self.vocab_size, dtype=np.int32)
        specials = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        byte_level = _uses_byte_level(json.loads(self.tokenizer_json).get("decoder"))
        unbyte = {c: b for b, c in byte_to_unicode().items()}
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if token in specials:
                continue
            if byte_level and all(c in unbyte for c in token):
                out[i] = len(token)  # one character per byte
            elif _BYTE_PIECE.fullmatch(token):
                out[i] = 1  # sentencepiece byte fallback
            else:
                out[i] = len(token.replace("\u2581", " ").encode("utf-8"))
        return out

    def to_json(self) -> dict:
        return {"kind": "hf", "tokenizer_json": self.tokenizer_json, "config": self.config, "vocab_size": self.vocab_size,
                "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "adds_bos": self.adds_bos}

    @classmethod
    def from_json(cls, d: dict) -> "HFTokenizer":
        if not isinstance(d.get("tokenizer_json"), str):
            raise LmjaxError("tokenizer JSON of kind 'hf' has no 'tokenizer_json' string (the tokenizer.json text)")
        tok = cls(d["tokenizer_json"], d.get("config"), bos_id=d.get("bos_id"), eos_id=d.get("eos_id"),
                  pad_id=d.get("pad_id"), vocab_size=d.get("vocab_size"))
        tok.adds_bos = bool(d.get("adds_bos", tok.adds_bos))
        return tok

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


def load_tokenizer(directory: str, model_config: dict | None = None):
    """The model directory's tokenizer: tokenizer.json, else a sentencepiece tokenizer.model, else None."""
    if os.path.isfile(os.path.join(directory, TOKENIZER_JSON)):
        return HFTokenizer.from_dir(directory, model_config)
    if os.path.isfile(os.path.join(directory, SPM_MODEL)):
        return SentencePieceTokenizer.load(os.path.join(directory, SPM_MODEL))
    return None


# ---------------------------------------------------------------------------------------
# Export


def _specials_config(tok, names: dict[int | None, str]) -> dict:
    out = {"clean_up_tokenization_spaces": False, "tokenizer_class": "PreTrainedTokenizerFast"}
    for attr, key in (("bos_id", "bos_token"), ("eos_id", "eos_token"), ("pad_id", "pad_token")):
        i = getattr(tok, attr)
        if i is not None:
            out[key] = names[i]
    return out


def _byte_tokenizer_json(tok: ByteTokenizer):
    """lmjax's byte tokenizer as tokenizer.json: a byte-level BPE without merges, so every
    byte b is token b, and the three specials at 256-258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    table = byte_to_unicode()
    hf = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    names = {tok.bos_id: "<|bos|>", tok.eos_id: "<|eos|>", tok.pad_id: "<|pad|>"}
    hf.add_special_tokens([names[i] for i in sorted(names)])
    return hf, names


def _char_tokenizer_json(tok: CharTokenizer):
    """lmjax's char tokenizer as tokenizer.json: characters as a merge-free BPE vocabulary."""
    from tokenizers import Tokenizer, decoders, models

    hf = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[]))
    hf.decoder = decoders.Fuse()
    names = {tok.bos_id: "<|bos|>", tok.eos_id: "<|eos|>", tok.pad_id: "<|pad|>"}
    hf.add_special_tokens([names[i] for i in sorted(names)])
    return hf, names


def write_tokenizer(tok, directory: str, max_len: int | None = None) -> list[str]:
    """Write `tok` as Hugging Face tokenizer files into `directory`; returns the names written."""
    if isinstance(tok, HFTokenizer):
        with open(os.path.join(directory, TOKENIZER_JSON), "w", encoding="utf-8") as f:
            f.write(tok.tokenizer_json)
        config = dict(tok.config) or _specials_config(tok, {i: tok._tok.id_to_token(i) for i in
                                                            (tok.bos_id, tok.eos_id, tok.pad_id) if i is not None})
        written = [TOKENIZER_JSON]
    elif isinstance(tok, (ByteTokenizer, CharTokenizer)):
        hf, names = _byte_tokenizer_json(tok) if isinstance(tok, ByteTokenizer) else _char_tokenizer_json(tok)
        hf.save(os.path.join(directory, TOKENIZER_JSON))
        config = _specials_config(tok, names)
        written = [TOKENIZER_JSON]
    elif isinstance(tok, SentencePieceTokenizer):
        with open(os.path.join(directory, SPM_MODEL), "wb") as f:
            f.write(tok.model_proto)
        return [SPM_MODEL]
    else:
        raise LmjaxError(f"cannot write a {type(tok).__name__} as Hugging Face tokenizer files")
    if max_len is not None:
        config.setdefault("model_max_length", max_len)
    with open(os.path.join(directory, TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return written + [TOKENIZER_CONFIG]
