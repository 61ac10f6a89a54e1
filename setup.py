"""lmjax: train language models at every scale, and explain their predictions, in JAX."""
from setuptools import find_packages, setup

setup(
    name="lmjax",
    version="0.1.0",
    description="JAX/Flax language models: train, sample, scale and explain.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lmjax", "lmjax.*"]),
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.6",
        "etils[epath]",  # one path API for local disks and buckets (gs://) alike
        # Corpus formats (lmjax/data/formats.py): parquet and Arrow / datasets.save_to_disk files,
        # .zst-compressed JSON lines. Core formats, so not an extra; imported only by their readers.
        "pyarrow>=14",
        "zstandard>=0.22",
        "sentencepiece>=0.2",
        "ml-collections>=0.1.1",
        "absl-py",
        "numpy",
        "scipy",  # scaling-law fits (L-BFGS)
        "threadpoolctl",  # one BLAS thread for the fits' thousands of tiny L-BFGS runs
        "matplotlib",  # figures (scaling fits) written as PNG files
        "tqdm",
    ],
    extras_require={
        # tensorboard only reads our event files back in tests; lmjax writes them itself.
        # torch (CPU is enough) and transformers are the reference the Hugging Face parity
        # tests (tests/test_hf.py) compare against; lmjax itself never imports torch.
        # nbclient/nbformat/ipykernel execute the colabs (tests/test_colabs.py); pytest-xdist runs
        # the suite on two workers (pytest.ini).
        # sae-lens and circuit-tracer are the references the dictionary tests (tests/test_sae_*.py)
        # read and write files with, and check dashboards and toy benchmarks against.
        # datasets writes the save_to_disk directories that tests/test_data_formats.py reads
        # (lmjax reads them with pyarrow alone).
        "test": ["pytest>=7", "pytest-xdist>=3.5", "tensorboard", "torch>=2.4", "transformers>=4.45", "tokenizers>=0.19",
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "sae-lens>=6.5", "circuit-tracer>=0.5",
                 "datasets>=2.14"],
        # Hugging Face import/export (lmjax.hf, `lmjax convert`): tokenizer.json files.
        # Safetensors are read and written by lmjax itself (NumPy + mmap), without PyTorch.
        "hf": ["tokenizers>=0.19"],
        # The PyTorch baselines that bench/ compares against.
        "bench": ["torch", "transformers", "sae-lens"],
        # Workdirs, token caches and corpora on Google Cloud Storage (gs://...).
        "gcs": ["gcsfs"],
    },
    entry_points={"console_scripts": ["lmjax=lmjax.commands:main"]},
)
