"""Published results reproduced, one module each (`lmjax repro NAME`).

Each module `lmjax/repro/NAME.py` pairs with a config `configs/repro/NAME.py` and has
`main(argv) -> dict`: it runs the experiment, writes its figures (PNG) and its numbers
(`results.json`) to `--out`, and returns the numbers. The module's docstring states the
published result and what lmjax got, with the command and wall time.
"""
REPRODUCTIONS = {
    "induction": "induction heads and the in-context-learning phase change (Olsson et al. 2022)",
    "grokking": "grokking modular addition (Power et al. 2022; Nanda et al. 2023)",
    "recall": "multi-query associative recall across architectures (Arora et al. 2023, Zoology)",
    "shakespeare": "nanoGPT's shakespeare_char, CPU variant",
    "upos": "linear part-of-speech probes by layer on UD English EWT",
}
