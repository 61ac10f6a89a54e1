"""Hugging Face checkpoints in and out: GPT-2, Llama-family (Mistral, Qwen2) and Mamba models.

    from lmjax.hf import load_hf, export_hf
    cfg, params, tokenizer = load_hf("path/to/hf_model", mesh=mesh)   # no PyTorch needed
    export_hf("path/to/out", cfg, params, tokenizer)                   # from_pretrained loads it

`lmjax convert --from_hf DIR --workdir OUT` and `lmjax convert --workdir DIR --to_hf OUT`
do the same from the command line (`workdirs` is the library side of it). Module map:
`lmjax.data.safetensors_io` reads and writes the file format with NumPy, `families` maps configs and
tensor names, `load` imports slice by slice into the target sharding, `export` writes.
The tokenizer.json wrapper lives with the other tokenizers (lmjax.data.hf_tokenizer).
"""
from lmjax.data.hf_tokenizer import HFTokenizer, load_tokenizer
from lmjax.hf.export import export_hf
from lmjax.hf.families import UnsupportedModel
from lmjax.hf.load import import_config, load_params, read_hf_config


def load_hf(directory: str, *, mesh=None, rules=None, dtype: str = "float32", scan_layers: bool = False):
    """-> (ModelConfig, params, tokenizer or None) of a local Hugging Face model directory."""
    cfg, params = load_params(directory, mesh=mesh, rules=rules, dtype=dtype, scan_layers=scan_layers)
    return cfg, params, load_tokenizer(directory, read_hf_config(directory))


__all__ = ["HFTokenizer", "UnsupportedModel", "export_hf", "import_config", "load_hf", "load_params",
           "load_tokenizer", "read_hf_config"]
