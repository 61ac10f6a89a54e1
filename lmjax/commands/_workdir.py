"""Interim: a workdir's config with overrides (replaced by lmjax.train.workdir)."""
from __future__ import annotations

import os


def restored_config(workdir, overrides=()):
    from lmjax.config import config_from_dict, set_field
    from lmjax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first (lmjax train --workdir {workdir})")
    config_dict, _ = ckpt.restore_meta()
    config = config_from_dict(config_dict)
    for item in overrides:
        key, _, value = item.partition("=")
        set_field(config, key, value)
    ckpt.close()
    return config
