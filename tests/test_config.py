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
