"""Hugging Face checkpoints in and out: GPT-2, Llama-family (Mistral, Qwen2) and Mamba models.

    from lmjax.hf import load_hf, export_hf
    cfg, params, tokenizer = load_hf("path/to/hf_model", mesh=mesh)   # no PyTorch needed
    export_hf("path/to/out", cfg, params, tokenizer)                   # from_pretrained loads it

`lmjax convert --from-hf DIR --workdir OUT` and `lmjax convert --workdir DIR --to-hf OUT`
do the same from the command line (lmjax/hf/cli.py). Module map: `safetensors_io` reads
and writes the file format with NumPy, `families` maps configs and tensor names,
`load` imports slice by slice into the target sharding, `export` writes, `tokenizer`
wraps tokenizer.json behind lmjax's tokenizer protocol.

Names are imported on first use, so that `lmjax --help` (which registers `convert`) and
the tokenizer (rebuilt from a checkpoint's JSON) do not pay for the rest.
"""
import importlib

_EXPORTS = {
    "export_hf": "lmjax.hf.export",
    "UnsupportedModel": "lmjax.hf.families",
    "import_config": "lmjax.hf.load",
    "load_params": "lmjax.hf.load",
    "read_hf_config": "lmjax.hf.load",
    "HFTokenizer": "lmjax.hf.tokenizer",
    "load_tokenizer": "lmjax.hf.tokenizer",
}


def load_hf(directory: str, *, mesh=None, rules=None, dtype: str = "float32", scan_layers: bool = False):
    """-> (ModelConfig, params, tokenizer or None) of a local Hugging Face model directory."""
    from lmjax.hf.load import load_params, read_hf_config
    from lmjax.hf.tokenizer import load_tokenizer

    cfg, params = load_params(directory, mesh=mesh, rules=rules, dtype=dtype, scan_layers=scan_layers)
    return cfg, params, load_tokenizer(directory, read_hf_config(directory))


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmjax.hf' has no attribute {name!r}")


__all__ = ["load_hf", *sorted(_EXPORTS)]
