"""The evaluate stage: what a variant costs and buys, measured against the dense model.

    perplexity.py  perplexity(lm, text, variant=): `PPLResult` with its protocol; run_windows
    nll.py         token NLL and per-window sums from hidden states (the head in chunks)
    windows.py     the evaluation windows and the confidence band of a figure
    generate.py    greedy generations, the one generation loop
    capability.py  capability probes and generative agreement with the dense model
    tasks.py       lm-eval tasks, dense and variant (task_index.py: which tasks, offline)
    speed.py       measured speed-up and memory (footprint.py: the byte estimates)
    gate.py        quality_gate: the largest cut of a method within R x dense perplexity
"""
