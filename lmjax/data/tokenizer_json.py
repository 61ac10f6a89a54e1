"""A tokenizer back from the JSON dict its `to_json` wrote (the one a checkpoint carries).

It lives apart from the tokenizers themselves because it knows every kind, lmjax's own
(tokenizers.py) and Hugging Face's (hf_tokenizer.py, which builds on lmjax's).
"""
from __future__ import annotations

import base64

from lmjax.data.hf_tokenizer import HFTokenizer
from lmjax.data.tokenizers import KINDS, ByteTokenizer, CharTokenizer, SentencePieceTokenizer, Tokenizer
from lmjax.errors import LmjaxError


def tokenizer_from_json(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from the dict its ``to_json`` returned."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(d["model"]))
    if kind == "hf":  # a Hugging Face tokenizer.json, imported with its model (lmjax.hf)
        return HFTokenizer.from_json(d)
    raise LmjaxError(f"unknown tokenizer kind {kind!r} in tokenizer JSON; expected one of {KINDS + ('hf',)}")
