"""Attribution graphs: a prediction traced through transcoder features, exactly.

`attribute(model, params, tokens, Transcoders.of(dictionaries, params))` builds the local
replacement model of the prompt (lmjax.graph.replacement) and the graph of direct effects
between its nodes (lmjax.graph.attribution); lmjax.graph.prune prunes it and scores it
with circuit-tracer's definitions; lmjax.graph.interventions tests what it claims on the
model itself; lmjax.graph.view and lmjax.graph.frontend draw it (the `lmjax explain`
page, circuit-tracer's graph JSON).
"""
from lmjax.graph.attribution import Graph, attribute, top_logits
from lmjax.graph.interventions import Effect, Interventions
from lmjax.graph.replacement import Replacement, Transcoders, build_replacement

__all__ = ["Effect", "Graph", "Interventions", "Replacement", "Transcoders", "attribute", "build_replacement",
           "top_logits"]
