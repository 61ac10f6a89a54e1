"""Data: tokenizers (lmjax's and Hugging Face's), text sources, cached token shards, and stateless batches."""
from lmjax.data.batches import eval_batches, num_eval_batches, train_batch, train_rows
from lmjax.data.shards import TokenData, TokenFile, prepare_tokens, token_dtype
from lmjax.data.sources import TextSource, text_source
from lmjax.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
)
from lmjax.data.tokenizer_json import tokenizer_from_json

__all__ = [
    "ByteTokenizer",
    "CharTokenizer",
    "SentencePieceTokenizer",
    "TextSource",
    "TokenData",
    "TokenFile",
    "Tokenizer",
    "build_tokenizer",
    "eval_batches",
    "num_eval_batches",
    "prepare_tokens",
    "text_source",
    "token_dtype",
    "tokenizer_from_json",
    "train_batch",
    "train_rows",
]
