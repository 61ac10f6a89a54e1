"""Named hook points: cache and intervene on activations, purely and under jit.

Every model calls `hook(module, hooks, name, x)` at each named activation (the
TransformerLens names listed in DESIGN.md). A `Hooks` value says what to do there:

- `cache`: the set of names whose activations the forward pass should return;
- `interventions`: name -> (fn, payload); the activation becomes `fn(x, payload)`.

`Hooks` is a pytree whose only leaves are the payloads, so a jitted function that takes
it recompiles when the *set* of hooked names or functions changes, never when a payload's
values change. With no hooks (the default) a hook point is the identity and adds nothing
to the compiled program.

Scanned layers (`scan_layers=True`) share one compiled block, so inside it the layer is a
traced index: a block then names its hook points `blocks.*.<suffix>`. Caching a scanned
point stacks it over layers (the requested layers are sliced out afterwards), and an
intervention on `blocks.3.<suffix>` is applied where the traced index equals 3.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp

HOOK_COLLECTION = "hooks"
LAYER_WILDCARD = "*"
_LAYER_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")

Intervention = Callable[[jax.Array, Any], jax.Array]


@jax.tree_util.register_pytree_node_class
class Hooks:
    """What to do at hook points: which activations to keep and which to change."""

    def __init__(
        self,
        cache: Iterable[str] = (),
        interventions: Mapping[str, tuple[Intervention, Any]] | None = None,
    ):
        self.cache = frozenset(cache)
        self.interventions = dict(interventions or {})
        for name, value in self.interventions.items():
            if not (isinstance(value, tuple) and len(value) == 2 and callable(value[0])):
                raise TypeError(
                    f"intervention for {name!r} must be a (fn, payload) pair with "
                    f"fn(activation, payload) -> activation; got {type(value).__name__}"
                )

    # -- pytree: payloads are the leaves; names and functions are static.
    def tree_flatten(self):
        names = tuple(sorted(self.interventions))
        payloads = tuple(self.interventions[n][1] for n in names)
        fns = tuple(self.interventions[n][0] for n in names)
        return payloads, (self.cache, names, fns)

    @classmethod
    def tree_unflatten(cls, aux, payloads):
        cache, names, fns = aux
        return cls(cache, {n: (f, p) for n, f, p in zip(names, fns, payloads)})

    @property
    def names(self) -> frozenset[str]:
        return self.cache | frozenset(self.interventions)

    def wants_cache(self, name: str) -> bool:
        if LAYER_WILDCARD not in name:
            return name in self.cache
        return any(_scanned_name(n) == name for n in self.cache)

    def touches(self, name: str) -> bool:
        """Whether the hook point `name` (or, scanned, `blocks.*.` name) is cached or changed."""
        return name in self.names or self.wants_cache(name) or bool(self.layer_interventions(name))

    def layer_interventions(self, name: str):
        """(layer, fn, payload) for every intervention matching a scanned `blocks.*.` name."""
        out = []
        for full, (fn, payload) in self.interventions.items():
            m = _LAYER_NAME.match(full)
            if m and _scanned_name(full) == name:
                out.append((int(m.group(1)), fn, payload))
        return out


def _scanned_name(name: str) -> str:
    """`blocks.3.attn.hook_q` -> `blocks.*.attn.hook_q`; other names are unchanged."""
    m = _LAYER_NAME.match(name)
    return f"blocks.{LAYER_WILDCARD}.{m.group(2)}" if m else name


def hook(module, hooks: Hooks | None, name: str, x: jax.Array, layer_index=None) -> jax.Array:
    """The hook point `name` in `module`: apply interventions, then cache if asked.

    `layer_index` is the traced layer number inside a scanned block (name `blocks.*.`).
    """
    if hooks is None:
        return x
    if LAYER_WILDCARD in name:
        for layer, fn, payload in hooks.layer_interventions(name):
            x = jnp.where(layer_index == layer, fn(x, payload), x)
    elif name in hooks.interventions:
        fn, payload = hooks.interventions[name]
        x = fn(x, payload)
    if hooks.wants_cache(name):
        module.sow(HOOK_COLLECTION, name, x)
    return x


def collect_cache(sown: Mapping, requested: Iterable[str]) -> dict[str, jax.Array]:
    """Turn the sown `hooks` collection into {requested name: activation}."""
    flat: dict[str, jax.Array] = {}

    def visit(tree):
        for key, value in tree.items():
            if isinstance(value, tuple):  # sow stores a tuple of values
                flat[key] = value[0]
            else:
                visit(value)

    visit(sown)
    cache = {}
    for name in requested:
        if name in flat:
            cache[name] = flat[name]
        elif _scanned_name(name) in flat:  # stacked over layers by the scan
            layer = int(_LAYER_NAME.match(name).group(1))
            cache[name] = flat[_scanned_name(name)][layer]
    return cache
