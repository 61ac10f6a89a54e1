"""A training config's ``data`` section -> its tokenizer and its token data (one source, or a
mixture of named sources), the way every command that trains or evaluates builds them.

``data`` is read by attribute (a ConfigDict or anything like it): ``source``, ``mixture``,
``text_key``, ``skip_malformed``, ``tokenizer`` (byte | char | sentencepiece, or a
``tokenizer.json`` / a directory holding one), ``spm_*``, ``val_fraction``,
``tokenize_workers``.
"""
from __future__ import annotations

import itertools
import os

from lmjax.data import reference
from lmjax.data.hf_tokenizer import TOKENIZER_JSON, HFTokenizer
from lmjax.data.mixture import MixtureData, parse_mixture
from lmjax.data.shards import TokenData, prepare_tokens
from lmjax.data.sources import TextSource, text_source
from lmjax.data.tokenizers import KINDS, Tokenizer, build_tokenizer
from lmjax.errors import MissingFileError

# A bare tokenizer.json names no EOS; documents need one between them, so take the usual one.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")


def sources(data) -> dict[str, TextSource]:
    """The config's sources by name: ``{"": data.source}``, or a mixture's components."""
    if not data.mixture:
        return {"": text_source(data.source, text_key=data.text_key, skip_malformed=data.skip_malformed)}
    return {c.name: text_source(c.source, text_key=c.text_key or data.text_key, skip_malformed=data.skip_malformed)
            for c in parse_mixture(data.mixture)}


def is_tokenizer_file(spec: str) -> bool:
    """Whether ``data.tokenizer`` names a tokenizer.json (a file or a directory), not a kind."""
    return spec not in KINDS


def load_tokenizer_json(spec: str) -> HFTokenizer:
    """A Hugging Face ``tokenizer.json``, or the one in a directory (with its tokenizer_config.json).
    Without a config naming it, EOS is the first special token named as EOS usually is
    (``<|endoftext|>``, ``</s>``, ...)."""
    path = os.path.expanduser(reference.resolve(spec, "data.tokenizer"))
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
        tok = HFTokenizer.from_dir(path)
    elif os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tok = HFTokenizer(f.read())
    else:
        raise MissingFileError(f"data.tokenizer={spec!r} is neither one of {KINDS} nor a tokenizer.json file "
                               "(or a directory holding one)")
    if tok.eos_id is None:
        specials = {t.content: i for i, t in tok._tok.get_added_tokens_decoder().items() if t.special}
        tok.eos_id = next((specials[n] for n in _EOS_NAMES if n in specials), None)
    return tok


def make_tokenizer(data, found: dict[str, TextSource] | None = None) -> Tokenizer:
    """The tokenizer ``data`` asks for; char and sentencepiece ones are built from the text of
    ``found`` (its sources, :func:`sources` by default)."""
    if is_tokenizer_file(data.tokenizer):
        return load_tokenizer_json(data.tokenizer)
    found = sources(data) if found is None else found

    def texts():
        return itertools.chain.from_iterable(s.documents() for s in found.values())

    return build_tokenizer(data.tokenizer, texts=texts, vocab_size=data.spm_vocab_size,
                           model_type=data.spm_model_type, model_path=data.spm_model_path or None)


def token_data(data, tokenizer: Tokenizer, cache_dir: str, *, progress: bool = True, group=None,
               found: dict[str, TextSource] | None = None) -> TokenData | MixtureData:
    """Tokenize (or load from the cache) every source of ``data``: a TokenData for one source,
    a MixtureData for a mixture."""
    found = sources(data) if found is None else found
    parts = {name: prepare_tokens(src, tokenizer, cache_dir, val_fraction=data.val_fraction, progress=progress,
                                  group=group, workers=data.tokenize_workers) for name, src in found.items()}
    if not data.mixture:
        return parts[""]
    return MixtureData(parse_mixture(data.mixture), parts)
