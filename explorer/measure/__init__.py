"""The measure stage: a probe -> layer-by-layer matrices and maps; a model -> measured damage.

    measures.py        the registry of similarities (cosine, angular, BI, CKA, NPIB), (L+1, L+1) each
    npib.py            MKA's diffusion-kernel embedding and its information bottleneck score
    manifold.py        2-D maps of the layers and of tokens per layer (UMAP and others)
    profiles.py        adjacent-layer profiles of one or several models
    damage.py          damage_map: the measured cost of removing each block, in the same (a, b) cells
    damage_estimate.py cheaper estimates of that map (fewer tokens, a first-order Taylor term)
    trust.py           how far each similarity ranks candidates as the damage map does
"""
