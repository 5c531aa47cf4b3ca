"""The probe stage: text -> calibration windows -> the residual stream at every layer boundary.

    text.py          load_texts(source): disjoint calibration / evaluation halves
    probe.py         probe(lm, text): `ProbeResult`, boundaries x_0..x_L, (L+1, N, H)
    token_select.py  which tokens of each window a measure keeps
"""
