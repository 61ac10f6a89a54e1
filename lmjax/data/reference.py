"""Reference data that lmjax does not ship (tinyshakespeare, UD English EWT, Epoch AI's
Chinchilla points): where to find it.

Configs and commands name such files as `$LMJAX_DATA/tinyshakespeare/input.txt`; the
variable points at the folder that holds them (in this project's checkout:
`export LMJAX_DATA=../shared/data`). A path is never guessed: without the variable the
error names both ways to give it, the variable and the flag.
"""
from __future__ import annotations

import os

from lmjax.errors import LmjaxError

ENV = "LMJAX_DATA"
PREFIX = f"${ENV}"


def resolve(path: str, flag: str) -> str:
    """`path` with a leading `$LMJAX_DATA` replaced by the variable's value; other paths
    as given. `flag` names where the path came from (e.g. `--config.data.source`), for the
    error when the variable is not set."""
    if not isinstance(path, str) or not (path == PREFIX or path.startswith(PREFIX + "/")):
        return path
    root = os.environ.get(ENV)
    if not root:
        raise LmjaxError(f"{flag}={path} needs {ENV}, the folder holding lmjax's reference data "
                         f"(e.g. export {ENV}=../shared/data), or give {flag} a path")
    return os.path.join(root, path[len(PREFIX) + 1:]) if path != PREFIX else root
