"""Published results reproduced, one module each (`lmjax repro NAME[:variant]`).

Each module `lmjax/repro/NAME.py` pairs with a config `configs/repro/NAME.py` and has
`main(argv, variant=None) -> dict`: it runs the experiment, writes its figures (PNG) and its
numbers (`results.json`) to the directory `--out`, and returns the numbers. The module's
docstring states the published result and what lmjax got, with the command and wall time.
`run("NAME:variant", argv)` runs one by name.
"""
import importlib

from lmjax.errors import LmjaxError

REPRODUCTIONS = {
    "induction": "induction heads and the in-context-learning phase change (Olsson et al. 2022)",
    "grokking": "grokking modular addition (Power et al. 2022; Nanda et al. 2023)",
    "recall": "multi-query associative recall across architectures (Arora et al. 2023, Zoology)",
    "shakespeare": "nanoGPT's shakespeare_char, CPU variant",
    "upos": "linear part-of-speech probes by layer on UD English EWT",
    "features": "dictionary features vs neurons: one-latent UPOS probes, and grokking's Fourier features",
}


def run(spec: str, argv=()) -> dict:
    """Run the reproduction `spec` = "NAME[:variant]" with its command-line flags `argv`
    (`--out DIR`, `--config.a.b=v` ...) -> its results. Only that reproduction is imported."""
    name, _, variant = spec.partition(":")
    if name not in REPRODUCTIONS:
        raise LmjaxError(f"unknown reproduction {name!r}; allowed: {sorted(REPRODUCTIONS)} (NAME or NAME:variant)")
    return importlib.import_module(f"lmjax.repro.{name}").main(list(argv), variant=variant or None)
