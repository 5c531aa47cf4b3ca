"""The core every stage stands on.

    model.py       LoadedModel: model, tokenizer, adapter, device
    variant.py     Variant: layer edits (drop, merge, replace) without touching the loaded weights
    backbone.py    run_backbone: the one executor of the decoder stack (no swap, no lock)
    passes.py      what the batch-major and layer-major passes share (boundaries, batches, layer calls)
    stream.py      the layer-major executor (one layer's weights on the device at a time)
    gather.py      per-layer accumulators fed by either executor, in any batch order
    ranks.py       data-parallel ranks on torch.distributed (float64 sums in rank order)
    resume.py      per-layer checkpoints under a fingerprint
    weights.py     layer weights from RAM or from the safetensors shards
    cache.py       the one cache service (every store of process state)
    dense_cache.py the dense model's boundary states and figures, so a variant pays only its changes
    session.py     the one resident model of a process (get_model)
    params.py      declared parameters (CLI, app, docs and tests read them)
    registry.py    the registry type of methods, measures and healing modes
    settings.py    every LAYER_EXPLORER_* environment variable, typed, once
    progress.py    progress events and the CancelToken
    errors.py      one-line ExplorerErrors
    tokens.py      windows, the BOS rule, batch sizes
    layer_lists.py the "3,7,10-12" syntax
"""
