"""Data: tokenizers (lmjax's and Hugging Face's), text sources and record formats, cached token
shards, mixtures, and stateless batches."""
from lmjax.data.batches import eval_batches, num_eval_batches, train_batch, train_rows
from lmjax.data.formats import MalformedRecordError, read_token_shard, write_token_shard
from lmjax.data.mixture import MixtureData, parse_mixture
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
    "MalformedRecordError",
    "MixtureData",
    "SentencePieceTokenizer",
    "TextSource",
    "TokenData",
    "TokenFile",
    "Tokenizer",
    "build_tokenizer",
    "eval_batches",
    "num_eval_batches",
    "parse_mixture",
    "prepare_tokens",
    "read_token_shard",
    "text_source",
    "token_dtype",
    "tokenizer_from_json",
    "train_batch",
    "train_rows",
    "write_token_shard",
]
