"""The apply stage: the ops that make a variant, written down and replayed bit for bit.

`Variant` itself (drop, merge, replace, without touching the loaded weights) is in
`explorer.core.variant`, since every stage holds one.

    recipe.py       Recipe: the ops, the text fingerprint and the fitted tensors; replay(lm, recipe)
    fitted.py       fitted tensors (healing's maps and patches) saved beside a recipe
    layer_config.py the exported config follows the kept layers (every per-layer field sliced)
    calibration.py  the fingerprint of a calibration text, and where a replay finds it again
"""
