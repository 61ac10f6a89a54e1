"""lmjax.sae: sparse dictionaries (SAEs, transcoders, cross-layer transcoders) on any hook point.

    architectures  the Dictionary (relu, topk, batchtopk, jumprelu, matryoshka; SAE or transcoder)
    crosslayer     the cross-layer transcoder (features at layer l write to MLP outputs l..L)
    activations    activations streamed from a model under jit, or cached to memory-mapped files
    training       fit(): one jit-compiled (vmapped, sharded) step for one or many dictionaries
    store          dictionary and run directories on disk
    metrics        FVU, explained variance, L0, dead latents, shrinkage, density, CE recovered, KL
    splice         a dictionary as a hook intervention: splice, clamp, ablate, steer
    dashboard      feature dashboards: contexts, histograms, logits; circuit-tracer's JSON schema
    dashboard_html the dashboards as a self-contained HTML page, and explain's features section
    interchange    SAELens and circuit-tracer file formats
    toy, matching  ground-truth data and the scores that compare a dictionary with it
"""
