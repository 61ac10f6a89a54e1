"""Experiment configs: load `configs/x.py[:variant]`, apply `--config.a.b=v` overrides, validate.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict` (big_vision
style): a training config with the sections of `default_config()`, or any other config
whose file declares its own schema (`defaults()`, see load_config), as the reproductions'
configs/repro/*.py do. Everything is checked before anything compiles; every problem is
reported at once as a `ConfigError` naming the field.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Iterable

import ml_collections

from lmjax.data.mixture import mixture_problems
from lmjax.errors import LmjaxError
from lmjax.model.config import ModelConfig
from lmjax.sharding import DCN_KEYS, DEFAULT_RULES, MESH_AXES, preset_problems, rule_problems


class ConfigError(LmjaxError):
    """A config that cannot run. The CLI prints the message, without a traceback."""


SECTIONS = ("model", "data", "train", "optimizer", "checkpoint", "mesh")
TOKENIZERS = ("byte", "char", "sentencepiece")
SCHEDULES = ("cosine", "linear", "constant")


def default_config() -> ml_collections.ConfigDict:
    """Every key a config may set, with its default. Config files override a subset."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {k: v for k, v in vars(ModelConfig(vocab_size=0)).items()}
    )  # model.vocab_size = 0: take it from the tokenizer
    c.model.vocab_size = 0
    # n_kv_head/d_head/d_mlp (and the mixers' dt_rank/rnn_hidden) default to None; allow ints there.
    for key in ("n_kv_head", "d_head", "d_mlp", "dt_rank", "rnn_hidden"):
        c.model[key] = ml_collections.FieldReference(None, field_type=int)

    c.data = ml_collections.ConfigDict()
    # "stdlib" (embedded corpus), a file, a directory or a glob: text, jsonl / json (.gz, .zst),
    # parquet, arrow, a datasets.save_to_disk directory, llm.c .bin token shards (docs/data.md)
    c.data.source = "stdlib"
    # named sources with weights (lmjax/data/mixture.py), used instead of data.source:
    # ({"name": "web", "source": "web/*.jsonl.zst", "weight": 0.7}, {"name": ..., "weight": ((0, 0.3), (500, 0.5))})
    c.data.mixture = ()
    c.data.text_key = "text"  # the text field of jsonl / parquet / arrow records
    c.data.skip_malformed = False  # skip (and count) malformed records instead of stopping at the first
    c.data.tokenize_workers = 0  # processes tokenizing a corpus; 0 = one per core
    c.data.tokenizer = "byte"  # byte | char | sentencepiece | path to a tokenizer.json (or its directory)
    c.data.spm_vocab_size = 4096  # sentencepiece: vocabulary to train
    c.data.spm_model_type = "bpe"  # sentencepiece: bpe | unigram
    c.data.spm_model_path = ""  # sentencepiece: load this .model instead of training
    c.data.val_fraction = 0.1
    c.data.cache_dir = ""  # token shard cache; "" = $LMJAX_CACHE or ~/.cache/lmjax
    c.data.seq_len = 0  # training window; 0 = model.max_len
    c.data.documents = False  # rows carry segment ids: no attention or state across documents (docs/data.md)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # optimizer steps
    c.train.batch_size = 16  # sequences per optimizer step (global, over all devices)
    # micro-batches per step (batch_size must divide evenly); 0 = auto: on CPU enough that each
    # device's micro-batch is <= 512 tokens (faster there), elsewhere 1 (train.steps.auto_grad_accum)
    c.train.grad_accum = 0
    c.train.seed = 0
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.eval_batches = 20  # 0 = the whole val split
    c.train.sample_tokens = 200  # sample printed at the end of training (0 = none)
    c.train.sample_prompt = ""
    c.train.sample_temperature = 0.8

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1e-3  # peak learning rate
    c.optimizer.end_lr = 1e-4  # reached at the last step (cosine / linear)
    c.optimizer.schedule = "cosine"  # cosine | linear | constant (after warmup)
    c.optimizer.warmup_steps = 100
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1  # not applied to norms, biases (or other 1-D params)
    c.optimizer.clip_norm = 1.0  # global gradient norm; 0 = no clipping

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    # The device mesh (lmjax/sharding.py): axis sizes, -1 = all devices left over.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.preset = ""  # "" = the sizes below | dp | fsdp | fsdp_tp (sets data/fsdp/tensor)
    c.mesh.data = -1  # data parallel (replicas)
    c.mesh.fsdp = 1  # fully sharded data parallel (params + optimizer state split too)
    c.mesh.tensor = 1  # tensor parallel (heads, mlp, vocab split inside a layer)
    # Split over slices (TPU multi-slice) or hosts over the data-centre network; an axis
    # then spans dcn_x * x devices. 1 = one slice.
    c.mesh.dcn_data = 1
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_tensor = 1
    # logical axis -> comma-separated mesh axes ("" = replicated); model code names only these.
    c.mesh.rules = ml_collections.ConfigDict(dict(DEFAULT_RULES))
    return c


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`path.py[:variant]` -> validated config, with `a.b=value` overrides applied.

    The file's `get_config(variant or None)` is laid over a schema: every key the config may
    have, with its default and type. By default the schema is the training config's
    (`default_config()`) and `validate` checks the result. A file that is not a training
    config declares its own schema, and may add its own checks:

        def defaults() -> ConfigDict: every key with its default (its type is the key's type)
        def get_config(arg=None) -> ConfigDict: the variant, over defaults() (often defaults()
            with a few values changed)
        def problems(config) -> list[str]: optional, "field: what is wrong" per problem

    Either way a key the schema lacks, a value of the wrong type (an override's text is
    parsed to the key's type) or a failed check is a ConfigError naming the field, raised
    before anything runs. configs/repro/*.py declare their own schemas this way.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (expected configs/NAME.py[:variant])")
    module_spec = importlib.util.spec_from_file_location("lmjax_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg=None)")
    try:
        user = module.get_config(arg or None)
    except (ValueError, KeyError, TypeError) as e:  # e.g. an unknown variant
        raise ConfigError(f"{spec}: {e}") from None
    own_schema = getattr(module, "defaults", None)
    config = merge(own_schema() if own_schema else default_config(), user, where=path)
    set_overrides(config, overrides)
    found = [] if own_schema else config_problems(config)
    if hasattr(module, "problems"):
        found += list(module.problems(config))
    _raise_problems(found)
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Apply `section.key=value` overrides to a training config and validate the result."""
    set_overrides(config, overrides)
    validate(config)
    return config


def set_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Apply `a.b=value` overrides to any config (set_field each), without validating."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        set_field(config, key, value)
    return config


def merge(base: ml_collections.ConfigDict, user, where: str) -> ml_collections.ConfigDict:
    """Overlay `user` (a mapping) onto `base`, the schema with its defaults; a key that
    `base` lacks is an error, a value is checked against the key's type (set_field)."""
    for key, value in user.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown {'section' if hasattr(value, 'items') else 'key'} {key!r}; "
                              f"allowed: {list(base.keys())}")
        _merge_into(base, key, value)
    return base


def _merge_into(base, dotted: str, value) -> None:
    if isinstance(_lookup(base, dotted, missing=None), ml_collections.ConfigDict) and hasattr(value, "items"):
        for key, inner in value.items():  # a section, or one nested in it (e.g. mesh.rules)
            _merge_into(base, f"{dotted}.{key}", inner)
    else:
        set_field(base, dotted, value)


def _lookup(config, dotted: str, missing=KeyError):
    node = config
    for part in dotted.split(".") if dotted else ():
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            if missing is KeyError:
                raise KeyError(dotted)
            return missing
        node = node[part]
    return node


def set_field(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    """Set the key `a.b.c` of `config` to value: the key must exist (the config is its own
    schema), a string from the command line is parsed to the key's type, another value must
    have that type (an int is taken for a float, a list for a tuple)."""
    section = dotted.partition(".")[0]
    if section not in config:
        what = f"section {section!r} in {dotted!r}" if "." in dotted else f"key {dotted!r}"
        raise ConfigError(f"unknown config {what}; allowed: {list(config.keys())}")
    parent_path, _, key = dotted.rpartition(".")
    parent = _lookup(config, parent_path, missing=None)
    if not isinstance(parent, ml_collections.ConfigDict) or key not in parent:
        where = parent_path if isinstance(parent, ml_collections.ConfigDict) else section
        keys = sorted((parent if isinstance(parent, ml_collections.ConfigDict) else config[section]).keys())
        raise ConfigError(f"unknown config key {dotted!r}; {where} has: {keys}")
    if parent_path.split(".")[-2:] == ["mesh", "rules"] and (value is None or isinstance(value, (tuple, list))):
        value = ",".join(value or ())  # ("data", "fsdp") / None in a config file -> "data,fsdp" / ""
    current = parent[key]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"{dotted} is a section; set its keys ({sorted(current.keys())}), e.g. {dotted}.KEY=VALUE")
    field_type = parent.get_type(key) if hasattr(parent, "get_type") else type(current)
    if isinstance(value, str) and field_type is not str:
        value = parse_value(value)
    if value is not None and field_type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if field_type is tuple and isinstance(value, list):
        value = tuple(value)
    if value is not None and field_type not in (type(None), object) and not isinstance(value, field_type):
        raise ConfigError(
            f"{dotted}: expected {field_type.__name__}, got {type(value).__name__} {value!r}"
        )
    try:
        parent[key] = value
    except TypeError as e:
        raise ConfigError(f"{dotted}: {e}") from None


def parse_value(text: str):
    """A command-line override's text as a Python literal (number, bool, tuple, None ...);
    true/false in any case as bools; anything else as the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def model_config(config, vocab_size: int | None = None) -> ModelConfig:
    d = dict(config.model)
    if vocab_size is not None and not d["vocab_size"]:
        d["vocab_size"] = vocab_size
    return ModelConfig.from_dict(d)


def validate(config) -> None:
    """Raise ConfigError listing every problem in the training config."""
    _raise_problems(config_problems(config))


def _raise_problems(problems) -> None:
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def config_problems(config) -> list[str]:
    """Every problem in a training config, one "field: what is wrong" line each."""
    problems = []
    model = model_config(config, vocab_size=config.model.vocab_size or 1)
    problems += model.problems()

    d, t, o, ck, m = config.data, config.train, config.optimizer, config.checkpoint, config.mesh

    def check(ok, field, msg):
        if not ok:
            problems.append(f"{field}: {msg}")

    check(d.tokenizer in TOKENIZERS or d.tokenizer.endswith(".json") or "/" in d.tokenizer, "data.tokenizer",
          f"{d.tokenizer!r} is not one of {TOKENIZERS} or a path to a tokenizer.json (or its directory)")
    check(bool(d.text_key), "data.text_key", "must be a non-empty field name (default 'text')")
    check(d.tokenize_workers >= 0, "data.tokenize_workers", f"must be >= 0 (0 = one per core), got {d.tokenize_workers}")
    problems += mixture_problems(d.mixture)
    check(d.spm_model_type in ("bpe", "unigram"), "data.spm_model_type", f"{d.spm_model_type!r} not in ('bpe', 'unigram')")
    check(0 < d.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
    check(0 <= d.seq_len <= config.model.max_len, "data.seq_len",
          f"{d.seq_len} must be in [0, model.max_len={config.model.max_len}] (0 = model.max_len)")
    for name in ("steps", "batch_size", "log_every", "eval_every"):
        check(t[name] > 0, f"train.{name}", f"must be positive, got {t[name]}")
    check(t.grad_accum >= 0, "train.grad_accum", f"must be >= 0 (0 = auto), got {t.grad_accum}")
    check(t.eval_batches >= 0 and t.sample_tokens >= 0, "train.eval_batches/sample_tokens", "must be >= 0")
    check(t.batch_size % max(t.grad_accum, 1) == 0, "train.batch_size",
          f"{t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
    check(t.sample_temperature >= 0, "train.sample_temperature", "must be >= 0")
    check(o.schedule in SCHEDULES, "optimizer.schedule", f"{o.schedule!r} not in {SCHEDULES}")
    check(o.lr > 0, "optimizer.lr", f"must be positive, got {o.lr}")
    check(0 <= o.end_lr <= o.lr, "optimizer.end_lr", f"must be in [0, optimizer.lr], got {o.end_lr}")
    check(o.warmup_steps >= 0, "optimizer.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optimizer.b1/b2", f"must be in [0, 1), got {o.b1}, {o.b2}")
    check(o.eps > 0 and o.weight_decay >= 0 and o.clip_norm >= 0, "optimizer.eps/weight_decay/clip_norm",
          "eps must be > 0, weight_decay and clip_norm >= 0")
    check(ck.every > 0 and ck.keep > 0, "checkpoint.every/keep", "must be positive")
    for axis in MESH_AXES + DCN_KEYS:
        check(m[axis] == -1 or m[axis] > 0, f"mesh.{axis}", f"must be -1 (fill) or positive, got {m[axis]}")
    problems += preset_problems(m) + rule_problems(m.rules)
    return problems


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
    """Rebuild a validated config from its JSON form (as stored in a checkpoint)."""
    config = merge(default_config(), d, where="checkpoint config")
    validate(config)
    return config
