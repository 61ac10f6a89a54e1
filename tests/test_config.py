"""Configs: the shipped files load, overrides are typed, every mistake names its field."""
import pytest

from lmjax import commands
from lmjax.config import ConfigError, load_config

QUICKSTART = "configs/quickstart.py"
SHAKESPEARE = "configs/shakespeare_char.py"


def test_shipped_configs_load():
    q = load_config(QUICKSTART)
    assert q.data.source == "stdlib" and q.data.tokenizer == "byte"
    cpu = load_config(SHAKESPEARE + ":cpu")
    gpu = load_config(SHAKESPEARE)
    # nanoGPT's shakespeare_char settings
    assert (cpu.model.n_layer, cpu.model.n_head, cpu.model.d_model, cpu.model.max_len) == (4, 4, 128, 64)
    assert (cpu.train.batch_size, cpu.train.steps, cpu.model.dropout) == (12, 2000, 0.0)
    assert (gpu.model.n_layer, gpu.model.d_model, gpu.model.max_len, gpu.train.batch_size) == (6, 384, 256, 64)
    assert (gpu.train.steps, gpu.model.dropout, gpu.optimizer.b2, gpu.optimizer.lr) == (5000, 0.2, 0.99, 1e-3)


def test_overrides_are_parsed_to_the_field_type():
    c = load_config(QUICKSTART, ["model.n_layer=2", "optimizer.lr=3e-4", "model.n_kv_head=2",
                                 "model.scan_layers=True", "train.sample_prompt=import os", "optimizer.end_lr=0"])
    assert c.model.n_layer == 2 and c.optimizer.lr == 3e-4 and c.model.n_kv_head == 2
    assert c.model.scan_layers is True and c.train.sample_prompt == "import os"
    assert c.optimizer.end_lr == 0.0 and isinstance(c.optimizer.end_lr, float)


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.nope=1", "model.nope"),
        ("nosection.x=1", "nosection"),
        ("train.steps=abc", "train.steps"),
        ("model.d_model=130", "model.d_model"),
        ("model.n_kv_head=3", "model.n_head"),
        ("model.norm=batchnorm", "model.norm"),
        ("data.tokenizer=words", "data.tokenizer"),
        ("optimizer.schedule=step", "optimizer.schedule"),
        ("train.batch_size=10", "train.batch_size"),  # not divisible by grad_accum=4 below
        ("data.seq_len=4096", "data.seq_len"),
        ("model.dropout=1.5", "model.dropout"),
        ("train.grad_accum=-1", "train.grad_accum"),
    ],
)
def test_bad_values_name_the_field(override, field):
    extra = ["train.grad_accum=4"] if override.startswith("train.batch_size") else []
    with pytest.raises(ConfigError) as e:
        load_config(QUICKSTART, [override, *extra])
    assert field in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(QUICKSTART, ["model.d_model=130", "optimizer.lr=-1"])
    assert "model.d_model" in str(e.value) and "optimizer.lr" in str(e.value)


def test_missing_file_and_unknown_variant():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/does_not_exist.py")
    with pytest.raises(ConfigError, match="unknown variant"):
        load_config(SHAKESPEARE + ":tpu")


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    code = commands.main(["train", "--config", QUICKSTART, "--workdir", str(tmp_path / "w"), "--config.model.n_head=5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.d_model" in err and "Traceback" not in err
    assert not (tmp_path / "w" / "checkpoints").exists()  # failed before any work


OWN_SCHEMA = '''
import ml_collections

def defaults():
    c = ml_collections.ConfigDict()
    c.steps = 10
    c.lr = 0.1
    c.pairs = (1, 2)
    c.name = "a"
    c.model = dict(width=8, act="relu")
    return c

def get_config(arg=None):
    c = defaults()
    if arg == "wide":
        c.model.width = 64
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: wide")
    return c

def problems(c):
    return [] if c.model.width % 8 == 0 else [f"model.width: {c.model.width} is not a multiple of 8"]
'''


def test_a_config_file_may_declare_its_own_schema(tmp_path):
    """defaults() in the file replaces the training schema: the same typed overrides,
    unknown keys and wrong types rejected, the file's problems() checked, variants by `:`."""
    path = tmp_path / "own.py"
    path.write_text(OWN_SCHEMA)
    c = load_config(f"{path}:wide", ["steps=3", "lr=1", "pairs=[4, 8]", "name=12", "model.act=gelu"])
    assert (c.steps, c.lr, c.pairs, c.name, c.model.width, c.model.act) == (3, 1.0, (4, 8), "12", 64, "gelu")
    assert isinstance(c.lr, float) and "optimizer" not in c  # no training sections
    for override, message in [("nope=1", "unknown config key 'nope'; allowed"), ("model.depth=2", "model has"),
                              ("steps=abc", "steps: expected int"), ("model.width=12", "not a multiple of 8"),
                              ("model=3", "model is a section")]:
        with pytest.raises(ConfigError, match=message):
            load_config(str(path), [override])
    with pytest.raises(ConfigError, match="unknown variant 'huge'"):
        load_config(f"{path}:huge")
    # a variant may only set keys that the schema has
    path.write_text(OWN_SCHEMA.replace('c.model.width = 64', 'c.extra = 1'))
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        load_config(f"{path}:wide")
