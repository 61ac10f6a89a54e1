"""Sharding on 8 simulated CPU devices: the mesh and rules from the config, sharded steps that
equal one device, checkpoints restored onto another mesh shape, and errors before compiling.

Tolerances (float32): one step's loss to rtol 1e-6 and gradients to atol 1e-6 of the
single-device result (only the order of floating-point sums differs); after ten Adam steps
losses to rtol 1e-5 and parameters to atol 1e-5.
"""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import commands, sharding
from lmjax.config import ConfigError, config_from_dict, load_config
from lmjax.model import Transformer
from lmjax.model.config import ModelConfig
from lmjax.train.optimizer import make_optimizer
from lmjax.train.steps import cross_entropy, init_state, make_train_step, param_shardings

from _model_fixtures import FAST_COMPILE, init_params

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs the 8 simulated devices of tests/conftest.py")

CFG = ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=4, n_kv_head=2, max_len=16, use_bias=True)
BATCH = 8

MESHES = {  # name -> (data, fsdp, tensor)
    "dp8": (8, 1, 1),
    "fsdp8": (1, 8, 1),
    "fsdp4_tp2": (1, 4, 2),
    "dp2_fsdp2_tp2": (2, 2, 2),
}


def mesh_of(data, fsdp, tensor):
    return sharding.make_mesh({"data": data, "fsdp": fsdp, "tensor": tensor})


def single_device_mesh():
    return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def model_and_reference():
    """The model, its params on one device, a batch, and the single-device loss and grads."""
    model = Transformer(CFG)
    params = jax.device_put(init_params(CFG, 0), jax.devices()[0])
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (BATCH, CFG.max_len + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    # LLVM at -O0 here and in the sharded steps: half the compile time, and every comparison
    # below has a tolerance for the order of sums anyway
    loss, grads = jax.jit(jax.value_and_grad(_loss(model)), compiler_options=FAST_COMPILE)(params, batch)
    return model, params, batch, float(loss), jax.tree.map(np.asarray, grads)


def _loss(model):
    def loss(params, batch):
        return cross_entropy(model.apply({"params": params}, batch["inputs"]), batch["targets"])

    return loss


@pytest.mark.parametrize("name", list(MESHES))
def test_one_step_loss_and_grads_equal_single_device(name, model_and_reference):
    model, params, batch, ref_loss, ref_grads = model_and_reference
    data, fsdp, tensor = MESHES[name]
    mesh = mesh_of(data, fsdp, tensor)
    p_sh = param_shardings(model, mesh)
    b_sh = sharding.batch_sharding(mesh)
    sharded = jax.device_put(params, p_sh)
    step = jax.jit(jax.value_and_grad(_loss(model)), in_shardings=(p_sh, {"inputs": b_sh, "targets": b_sh}),
                   out_shardings=(sharding.replicated(mesh), p_sh), compiler_options=FAST_COMPILE)
    loss, grads = step(sharded, jax.device_put(batch, b_sh))
    assert float(loss) == pytest.approx(ref_loss, rel=1e-6)
    for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), r, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))

    # The parameter shardings are the rules' (embed -> fsdp, heads/kv_heads/mlp/vocab -> tensor):
    # check the specs and the shape of the piece each device holds.
    def shard_shape(x):
        return x.addressable_shards[0].data.shape

    d, h, kvh, dh, f, v = CFG.d_model, CFG.n_head, CFG.kv_heads, CFG.head_dim, CFG.mlp_dim, CFG.vocab_size
    blk = sharded["blocks_0"]
    expected = {
        "q": (blk["attn"]["q"]["kernel"], ("fsdp", "tensor", None), (d // fsdp, h // tensor, dh)),
        "k": (blk["attn"]["k"]["kernel"], ("fsdp", "tensor", None), (d // fsdp, kvh // tensor, dh)),
        "o": (blk["attn"]["o"]["kernel"], ("tensor", None, "fsdp"), (h // tensor, dh, d // fsdp)),
        "fc_in": (blk["mlp"]["fc_in"]["kernel"], ("fsdp", "tensor"), (d // fsdp, f // tensor)),
        "fc_out": (blk["mlp"]["fc_out"]["kernel"], ("tensor", "fsdp"), (f // tensor, d // fsdp)),
        "ln1": (blk["ln1"]["scale"], ("fsdp",), (d // fsdp,)),
        "embed": (sharded["embed"], ("tensor", "fsdp"), (v // tensor, d // fsdp)),
        "pos_embed": (sharded["pos_embed"], (None, "fsdp"), (CFG.max_len, d // fsdp)),
    }
    for what, (x, spec, shape) in expected.items():
        assert tuple(x.sharding.spec) == spec, what
        assert x.sharding.mesh.shape == {"data": data, "fsdp": fsdp, "tensor": tensor}
        assert shard_shape(x) == shape, what
    assert tuple(grads["blocks_0"]["attn"]["q"]["kernel"].sharding.spec) == ("fsdp", "tensor", None)


def test_ten_steps_fsdp_x_tp_match_single_device():
    model = Transformer(dataclasses.replace(CFG, n_layer=1))
    optimizer = make_optimizer(config_from_dict({}).optimizer, 10)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(10):
        t = rng.integers(0, CFG.vocab_size, (BATCH, CFG.max_len + 1)).astype(np.int32)
        batches.append({"inputs": t[:, :-1], "targets": t[:, 1:]})

    # the state created sharded on the 4 x 2 mesh; the single-device run starts from a copy
    sharded_mesh, one_device = mesh_of(1, 4, 2), single_device_mesh()
    initial = init_state(model, optimizer, sharded_mesh, seed=0)
    initial_one = jax.device_put(jax.tree.map(np.asarray, initial),  # own buffers: the steps donate their state
                                 jax.sharding.NamedSharding(one_device, jax.sharding.PartitionSpec()))

    def run(mesh, state):
        b_sh = sharding.batch_sharding(mesh)
        # lmjax's own train step, compiled at -O0 (half the compile time; tolerances below)
        step = make_train_step(model, optimizer, mesh=mesh).lower(state, jax.device_put(batches[0], b_sh)).compile(
            FAST_COMPILE)
        losses = []
        for b in batches:
            state, metrics = step(state, jax.device_put(b, b_sh))
            losses.append(float(metrics["loss"]))
        return losses, state

    ref_losses, ref_state = run(one_device, initial_one)
    losses, state = run(sharded_mesh, initial)
    assert tuple(state["params"]["blocks_0"]["mlp"]["fc_in"]["kernel"].sharding.spec) == ("fsdp", "tensor")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert ref_losses[-1] < ref_losses[0]
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_train_step_keeps_the_residual_stream_split_over_the_batch_only():
    """Each block's residual sums are annotated (batch, length, embed) in the model; the
    compiled step must carry those annotations to the mesh (without them XLA split the
    stream along d_model like the FSDP parameters: a 3x slower step)."""
    model = Transformer(CFG)
    optimizer = make_optimizer(config_from_dict({}).optimizer, 10)
    mesh = mesh_of(1, 8, 1)
    # shapes and shardings: lowering needs no values (nor compiling the init)
    state = jax.eval_shape(lambda: init_state(model, optimizer, mesh, seed=0))
    tokens = jax.ShapeDtypeStruct((BATCH, CFG.max_len), jnp.int32, sharding=sharding.batch_sharding(mesh))
    batch = {"inputs": tokens, "targets": tokens}
    text = make_train_step(model, optimizer, mesh=mesh).lower(state, batch).as_text()
    constraints = [line for line in text.splitlines() if "sharding_constraint" in line or "@Sharding" in line]
    assert len(constraints) >= 2 * CFG.n_layer  # two residual sums per block, forward and backward
    stream = f"tensor<{BATCH}x{CFG.max_len}x{CFG.d_model}x"
    assert all(stream in line for line in constraints), constraints
    assert all('[{"data", "fsdp"}, {}, {}]' in line for line in constraints if "sdy." in line), constraints


# ---------------------------------------------------------------- mesh config, presets, rules


@pytest.mark.parametrize("mesh_cfg,shape", [
    ({}, (8, 1, 1)),
    ({"preset": "dp"}, (8, 1, 1)),
    ({"preset": "fsdp"}, (1, 8, 1)),
    ({"preset": "fsdp_tp"}, (1, 4, 2)),
    ({"preset": "fsdp_tp", "tensor": 4}, (1, 2, 4)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
])
def test_presets_and_fill(mesh_cfg, shape):
    assert tuple(sharding.make_mesh(mesh_cfg).shape.values()) == shape


def test_rules_come_from_the_config():
    c = load_config("configs/quickstart.py", ["mesh.preset=fsdp_tp", "mesh.rules.vocab=", "mesh.rules.mlp=",
                                              "mesh.rules.embed=data,fsdp"])
    rules = sharding.logical_rules(c.mesh)
    mesh = sharding.make_mesh(c.mesh)
    shardings = param_shardings(Transformer(CFG), mesh, rules)
    assert tuple(shardings["embed"].spec) == (None, ("data", "fsdp"))
    assert tuple(shardings["blocks_0"]["mlp"]["fc_in"]["kernel"].spec) == (("data", "fsdp"), None)
    assert tuple(shardings["blocks_0"]["attn"]["q"]["kernel"].spec) == (("data", "fsdp"), "tensor", None)
    # the rules travel with the config (and so with the checkpoint)
    again = config_from_dict(json.loads(c.to_json()))
    assert sharding.logical_rules(again.mesh) == rules


def test_dimension_that_does_not_divide_is_replicated_with_a_note():
    model = Transformer(dataclasses.replace(CFG, vocab_size=259))
    shardings, notes = param_shardings(model, mesh_of(1, 4, 2), with_notes=True)
    assert tuple(shardings["embed"].spec) == (None, "fsdp")
    assert len(notes) == 1 and "vocab" in notes[0] and "259" in notes[0]


def test_dcn_split_puts_each_process_on_its_own_slice_of_the_axis():
    @dataclasses.dataclass(frozen=True)
    class FakeDevice:  # two hosts of four devices
        id: int
        process_index: int
        platform: str = "cpu"
        device_kind: str = "cpu"

    devices = [FakeDevice(i, i // 4) for i in range(8)]
    grid = sharding.device_grid({"dcn_data": 2, "data": 1, "fsdp": 2, "tensor": 2}, devices)
    assert grid.shape == (2, 2, 2)
    assert [{d.process_index for d in row.flat} for row in grid] == [{0}, {1}]
    grid = sharding.device_grid({"dcn_fsdp": 2, "data": 1, "fsdp": -1, "tensor": 2}, devices)
    assert grid.shape == (1, 4, 2)
    assert [d.process_index for d in grid[0, :, 0]] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="dcn"):
        sharding.device_grid({"dcn_data": 4}, devices)


def test_each_process_loads_only_the_rows_its_devices_hold():
    mesh = mesh_of(1, 4, 2)  # tensor replicates the batch: 4 distinct row ranges on 8 devices
    full = np.arange(8 * 3).reshape(8, 3)
    calls = []

    def load(start, stop):
        calls.append((start, stop))
        return {"x": full[start:stop]}

    out = sharding.assemble_batch(sharding.batch_sharding(mesh), 8, load)
    np.testing.assert_array_equal(np.asarray(out["x"]), full)
    assert sorted(calls) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert out["x"].sharding.spec == sharding.batch_spec()


# ---------------------------------------------------------------- restore onto another mesh shape


TEXT = "".join(f"The {a} {b} jumps over the {c} dog {n} times.\n" for n in range(200)
               for a, b, c in [("quick", "brown", "lazy"), ("slow", "red", "happy")])


def test_restore_onto_a_different_mesh_continues_with_the_same_loss(tmp_path):
    from lmjax.train.loop import train

    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)

    def config(preset):
        return config_from_dict({
            "model": dict(n_layer=1, d_model=32, n_head=4, max_len=16),
            "data": dict(source=str(corpus), tokenizer="byte"),
            "train": dict(steps=8, batch_size=8, log_every=1, eval_every=100, eval_batches=1, sample_tokens=0),
            "optimizer": dict(lr=3e-3, warmup_steps=2),
            "checkpoint": dict(every=4, keep=2),
            "mesh": dict(preset=preset),
        })

    a, b = tmp_path / "fsdp8", tmp_path / "fsdp4_tp2"
    same = train(config("fsdp"), str(a), progress=False, quiet=True)  # 8-way FSDP, checkpoints at 4 and 8
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "8")
    with open(b / "metrics.jsonl") as f:
        kept = [line for line in f if json.loads(line)["step"] <= 4]
    (b / "metrics.jsonl").write_text("".join(kept))
    other = train(config("fsdp_tp"), str(b), progress=False, quiet=True)  # resumed from step 4 on 4x2
    assert other["start_step"] == 4
    kernel = other["state"]["params"]["blocks_0"]["attn"]["q"]["kernel"]
    assert kernel.sharding.mesh.shape == {"data": 1, "fsdp": 4, "tensor": 2}
    assert tuple(kernel.sharding.spec) == ("fsdp", "tensor", None)

    def losses(workdir):
        rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        return {r["step"]: r["loss"] for r in rows if "loss" in r and r["step"] > 4}

    la, lb = losses(a), losses(b)
    assert sorted(lb) == [6, 7, 8]  # the resumed run's first step (a compile) is logged with its second
    expected = [(la[5] + la[6]) / 2, la[7], la[8]]
    np.testing.assert_allclose([lb[6], lb[7], lb[8]], expected, rtol=1e-5)
    assert other["val_loss"] == pytest.approx(same["val_loss"], rel=1e-5)


# ---------------------------------------------------------------- errors before compiling


def _cli_train(tmp_path, capsys, overrides):
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    cfg = tmp_path / "cfg.py"
    cfg.write_text("def get_config(arg=None):\n"
                   f"    return {{'model': dict(n_layer=1, d_model=48, n_head=6, max_len=16),\n"
                   f"            'data': dict(source={str(corpus)!r}),\n"
                   "            'train': dict(steps=2, batch_size=8, sample_tokens=0)}\n")
    code = commands.main(["train", "--config", str(cfg), "--workdir", str(tmp_path / "w"), "--no_progress",
                     *[f"--config.{o}" for o in overrides]])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("overrides,names", [
    (["train.batch_size=12", "mesh.data=8"], ["train.batch_size=12", "data-parallel width 8"]),
    (["mesh.data=2", "mesh.tensor=4"], ["model.n_head=6", "heads split 4", "mesh.tensor"]),
    (["model.n_kv_head=3", "mesh.data=4", "mesh.tensor=2", "mesh.rules.heads="], ["model.n_kv_head=3", "kv_heads split 2"]),
    (["mesh.data=3"], ["mesh.data/mesh.fsdp/mesh.tensor", "needs 3 devices", "8 are present"]),
    (["mesh.data=3", "mesh.fsdp=-1"], ["8 devices are not divisible", "3"]),
    (["mesh.dcn_data=2"], ["mesh.dcn_data", "needs 2 slices/processes", "1 are present"]),
])
def test_mesh_errors_are_one_line_naming_the_fields(tmp_path, capsys, overrides, names):
    code, err = _cli_train(tmp_path, capsys, overrides)
    assert code == 2 and len(err.splitlines()) == 1, err
    for name in names:
        assert name in err
    assert not os.path.exists(tmp_path / "w" / "checkpoints")  # nothing compiled or saved


def test_preset_and_sizes_together_is_a_config_error():
    with pytest.raises(ConfigError, match="mesh.preset"):
        load_config("configs/quickstart.py", ["mesh.preset=fsdp", "mesh.tensor=2"])
    with pytest.raises(ConfigError, match="mesh.rules.vocab"):
        load_config("configs/quickstart.py", ["mesh.rules.vocab=model"])
