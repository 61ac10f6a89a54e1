"""Checkpointer: bitwise round trips, keep-last-N, async saves, metadata and clear errors."""
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lmjax.train.checkpoint import Checkpointer

CONFIG = {"model": {"n_layer": 2, "d_model": 8}, "lr": 1e-3, "name": "tiny"}
TOKENIZER = {"kind": "byte", "vocab_size": 256}


def make_state(d_model=8, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"embed": jax.random.normal(k1, (16, d_model)),
              "blocks_0": {"kernel": jax.random.normal(k2, (d_model, d_model)).astype(jnp.bfloat16),
                           "bias": jnp.arange(d_model, dtype=jnp.float32)}}
    opt_state = optax.adamw(1e-3).init(params)
    # One real update so the moments are not trivially zero.
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    _, opt_state = optax.adamw(1e-3).update(grads, opt_state, params)
    return {"step": jnp.int32(7), "params": params, "opt_state": opt_state}


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x).reshape(-1).view(np.uint8), np.asarray(y).reshape(-1).view(np.uint8))


def save(ckpt, step, state, **kw):
    return ckpt.save(step, state, config={**CONFIG, "saved_at": step}, tokenizer=TOKENIZER, **kw)


def test_roundtrip_bitwise_with_optax_structure(tmp_path):
    state = make_state()
    with Checkpointer(str(tmp_path / "ckpt"), save_every=10) as ckpt:
        assert ckpt.latest_step() is None
        assert save(ckpt, 10, state)
        ckpt.wait()
        restored = ckpt.restore(jax.eval_shape(lambda: state))
    assert_bitwise_equal(restored, state)
    # The optax namedtuples come back as namedtuples, not lists/dicts.
    assert type(restored["opt_state"][0]) is type(state["opt_state"][0])
    assert restored["opt_state"][0].mu["embed"].shape == (16, 8)


def test_restore_from_concrete_template(tmp_path):
    state = make_state()
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        save(ckpt, 1, state)
        template = jax.tree.map(jnp.zeros_like, state)
        assert_bitwise_equal(ckpt.restore(template), state)


def test_sharded_save_and_restore_onto_given_shardings(tmp_path):
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",))
    x = jax.device_put(jnp.arange(8 * n * 4, dtype=jnp.float32).reshape(8 * n, 4), NamedSharding(mesh, P("data")))
    state = {"w": x, "step": jnp.int32(3)}
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        save(ckpt, 1, state)
        # Restore onto a different (replicated) sharding: values equal, placement as asked.
        replicated = NamedSharding(mesh, P())
        target = {"w": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                  "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
        out = ckpt.restore(target)
        assert out["w"].sharding == replicated
        np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(x))
        # eval_shape of sharded arrays carries an abstract mesh; it must still restore.
        out = ckpt.restore(jax.eval_shape(lambda: state))
        assert out["w"].sharding.is_equivalent_to(x.sharding, x.ndim)
        np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(x))
        with jax.set_mesh(mesh):  # the mesh in context is the one used
            out = ckpt.restore(jax.eval_shape(lambda: state))
        assert out["w"].sharding.mesh == mesh
        np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(x))


def test_should_save_and_force(tmp_path):
    state = {"a": jnp.ones(3)}
    with Checkpointer(str(tmp_path), save_every=5, keep=10) as ckpt:
        assert [s for s in range(12) if ckpt.should_save(s)] == [0, 5, 10]
        assert not save(ckpt, 3, state)
        assert save(ckpt, 5, state)
        assert save(ckpt, 7, state, force=True)
        ckpt.wait()
        assert ckpt.all_steps() == [5, 7]
        # Saving an existing step is a no-op, not an error, even with force.
        assert not save(ckpt, 7, state, force=True)
        assert not save(ckpt, 5, state)
        ckpt.wait()
        assert ckpt.all_steps() == [5, 7]


def test_async_saves_keep_last_n_and_older_steps(tmp_path):
    states = {s: {"w": jnp.full((4, 4), float(s)), "step": jnp.int32(s)} for s in range(1, 6)}
    with Checkpointer(str(tmp_path), keep=2, save_every=1, async_save=True) as ckpt:
        for s, st in states.items():
            assert save(ckpt, s, st)  # back-to-back async saves: none may be dropped
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
        assert sorted(os.listdir(tmp_path)) == ["4", "5"]
        assert ckpt.latest_step() == 5
        abstract = jax.eval_shape(lambda: states[1])
        assert_bitwise_equal(ckpt.restore(abstract), states[5])
        assert_bitwise_equal(ckpt.restore(abstract, step=4), states[4])
        assert ckpt.restore_meta(4)[0]["saved_at"] == 4
        with pytest.raises(FileNotFoundError, match="step 1 .*available steps: \\[4, 5\\]"):
            ckpt.restore(abstract, step=1)


def test_async_save_survives_deleting_the_arrays(tmp_path):
    # The train loop donates its state right after save(): the async write must not need it.
    state = make_state()
    expected = jax.tree.map(np.asarray, state)
    with Checkpointer(str(tmp_path), save_every=1, async_save=True) as ckpt:
        save(ckpt, 1, state)
        abstract = jax.eval_shape(lambda: state)
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        ckpt.wait()
        assert_bitwise_equal(jax.tree.map(np.asarray, ckpt.restore(abstract)), expected)


def test_restore_meta_and_second_checkpointer(tmp_path):
    state = {"a": jnp.arange(5)}
    ckpt = Checkpointer(str(tmp_path), save_every=1)
    save(ckpt, 3, state)
    save(ckpt, 9, state)
    ckpt.wait()
    config, tokenizer = ckpt.restore_meta()
    assert config == {**CONFIG, "saved_at": 9} and tokenizer == TOKENIZER
    assert ckpt.restore_meta(3)[0]["saved_at"] == 3
    ckpt.close()

    other = Checkpointer(str(tmp_path))
    assert other.latest_step() == 9
    assert other.restore_meta()[1] == TOKENIZER
    np.testing.assert_array_equal(other.restore({"a": jnp.zeros(5, jnp.int32)})["a"], np.arange(5))
    other.close()


def test_half_written_step_is_ignored(tmp_path):
    state = {"a": jnp.arange(5.0)}
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        save(ckpt, 2, state)
    # Simulate a save killed mid-write: Orbax's temporary name for step 8, partly filled.
    shutil.copytree(tmp_path / "2", tmp_path / "8.orbax-checkpoint-tmp")
    (tmp_path / "8.orbax-checkpoint-tmp" / "state" / "junk").write_bytes(b"\x00" * 10)
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        assert ckpt.latest_step() == 2
        assert ckpt.all_steps() == [2]
        np.testing.assert_array_equal(ckpt.restore(jax.eval_shape(lambda: state))["a"], np.arange(5.0))
        assert (tmp_path / "8.orbax-checkpoint-tmp").exists()  # opening never deletes anything


def test_restore_without_checkpoint_names_directory(tmp_path):
    missing = tmp_path / "run" / "checkpoints"
    with Checkpointer(str(missing)) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match=str(missing)):
            ckpt.restore({"a": jax.ShapeDtypeStruct((3,), jnp.float32)})
        with pytest.raises(FileNotFoundError, match=str(missing)):
            ckpt.restore_meta()
    assert not missing.exists()  # a reader does not create directories


def test_restore_different_model_is_a_clear_error(tmp_path):
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        save(ckpt, 1, make_state(d_model=8))
        other = jax.eval_shape(lambda: make_state(d_model=12))
        with pytest.raises(ValueError, match="parameter shapes differ") as err:
            ckpt.restore(other)
        msg = str(err.value)
        assert "params/embed: checkpoint (16, 8) vs expected (16, 12)" in msg
        assert "opt_state/0/mu/blocks_0/kernel: checkpoint (8, 8) vs expected (12, 12)" in msg
        # A missing / extra parameter is named too.
        extra = jax.eval_shape(lambda: {**make_state(), "ema": jnp.zeros(3)})
        with pytest.raises(ValueError, match="ema: missing from the checkpoint"):
            ckpt.restore(extra)


def test_bad_arguments():
    with pytest.raises(ValueError, match="save_every"):
        Checkpointer("/nonexistent/x", save_every=0)


# ---------------------------------------------------------------- errors, unreadable steps, partial reads


def _truncate(path, size=10):
    with open(path, "r+b") as f:
        f.truncate(size)


def test_errors_are_lmjax_errors_for_the_command_line(tmp_path):
    from lmjax.errors import LmjaxError, MissingFileError
    from lmjax.train.checkpoint import CheckpointMismatchError

    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        with pytest.raises(MissingFileError):  # still a FileNotFoundError too
            ckpt.restore_meta()
        save(ckpt, 1, make_state(d_model=8))
        with pytest.raises(CheckpointMismatchError):
            ckpt.restore(jax.eval_shape(lambda: make_state(d_model=12)))
    with pytest.raises(LmjaxError, match="keep and save_every"):
        Checkpointer(str(tmp_path), keep=0)


def test_read_newest_falls_back_over_unreadable_steps_and_deletes_nothing(tmp_path):
    from lmjax.errors import LmjaxError
    from lmjax.train.checkpoint import UnreadableCheckpointError

    states = {s: {"w": jnp.full((4,), float(s))} for s in (1, 2, 3)}
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        for s, st in states.items():
            save(ckpt, s, st)
        ckpt.wait()
    _truncate(tmp_path / "3" / "config" / "metadata")  # a truncated JSON: "Unterminated string ..."
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    warnings = []
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        step, (config, _) = ckpt.read_newest(ckpt.restore_meta, on_unreadable=warnings.append)
        assert step == 2 and config["saved_at"] == 2
        assert len(warnings) == 1 and "step 3" in warnings[0] and "unreadable" in warnings[0], warnings
        assert "JSONDecodeError" in warnings[0] and "using step 2" in warnings[0]
        # at_most: the newest readable step at or below it; a given step is read or refused, never replaced
        assert ckpt.read_newest(ckpt.restore_meta, at_most=1, on_unreadable=warnings.append)[0] == 1
        with pytest.raises(UnreadableCheckpointError, match="step 3"):
            ckpt.read_newest(ckpt.restore_meta, step=3)
        # an LmjaxError from the reader is about its input, not the files: no fallback
        def refuse(step):
            raise LmjaxError(f"refused step {step}")

        with pytest.raises(LmjaxError, match="refused step 3"):
            ckpt.read_newest(refuse)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files  # nothing deleted or added

    for s in (1, 2):
        _truncate(tmp_path / str(s) / "config" / "metadata")
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(UnreadableCheckpointError, match="step 3: .*step 2: .*step 1: "):
            ckpt.read_newest(ckpt.restore_meta, on_unreadable=warnings.append)


def test_a_truncated_array_file_is_unreadable_too(tmp_path):
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        save(ckpt, 1, make_state(seed=1))
        save(ckpt, 2, make_state(seed=2))
        ckpt.wait()
    for f in (tmp_path / "2" / "state").rglob("d/*"):  # the array data files (ocdbt)
        _truncate(f)
    warnings = []
    with Checkpointer(str(tmp_path)) as ckpt:
        abstract = jax.eval_shape(lambda: make_state())
        step, restored = ckpt.read_newest(lambda s: ckpt.restore(abstract, s), on_unreadable=warnings.append)
    assert step == 1 and len(warnings) == 1 and "step 2" in warnings[0]
    assert_bitwise_equal(restored, make_state(seed=1))


def test_set_aside_keeps_the_files_and_frees_the_step(tmp_path):
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        save(ckpt, 1, {"a": jnp.ones(3)})
        save(ckpt, 2, {"a": jnp.ones(3)})
        ckpt.wait()
        files = sorted(p.relative_to(tmp_path / "2") for p in (tmp_path / "2").rglob("*"))
        moved = Path(ckpt.set_aside(2))
        assert moved.name == "2.unreadable" and ckpt.all_steps() == [1] and ckpt.latest_step() == 1
        assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == files
        assert save(ckpt, 2, {"a": jnp.zeros(3)})  # the step can be saved again
        ckpt.wait()
        assert ckpt.set_aside(2).name == "2.unreadable.2"  # a second one never replaces the first
    with Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.all_steps() == [1]  # set-aside directories are not steps to Orbax


def test_exclusive_writer_removes_the_temporary_dirs_of_killed_saves(tmp_path):
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        save(ckpt, 2, {"a": jnp.arange(3.0)})
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")
    with Checkpointer(str(tmp_path)) as reader:
        assert reader.all_steps() == [2]
    assert (tmp_path / "3.orbax-checkpoint-tmp").exists()  # a reader never deletes
    with Checkpointer(str(tmp_path), save_every=1, exclusive=True) as writer:
        assert save(writer, 3, {"a": jnp.arange(3.0)})
        writer.wait()
        assert writer.all_steps() == [2, 3]
    assert sorted(os.listdir(tmp_path)) == ["2", "3"]


def test_partial_restore_reads_only_the_subtrees_asked_for(tmp_path):
    state = make_state()
    with Checkpointer(str(tmp_path), save_every=1) as ckpt:
        save(ckpt, 1, state)
        ckpt.wait()
        out = ckpt.restore({"params": jax.eval_shape(lambda: state["params"])}, partial=True)
        assert set(out) == {"params"}
        assert_bitwise_equal(out["params"], state["params"])
        other = {"params": jax.eval_shape(lambda: make_state(d_model=12)["params"])}
        with pytest.raises(ValueError, match="params/embed: checkpoint \\(16, 8\\) vs expected \\(16, 12\\)") as err:
            ckpt.restore(other, partial=True)
        assert "opt_state" not in str(err.value)  # only what was asked for is compared
