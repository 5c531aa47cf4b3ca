"""The heal stage (between apply and evaluate): repair a compressed variant with a closed-form map
or by distillation from the dense model; the loaded model is never modified.

Each healing mode lives in its own module and registers itself; importing this package registers
all of them. See `registry` for the API and docs/healing.md for what each mode computes.

Example:
    >>> from explorer.heal import heal, list_modes
    >>> r = heal(compress(lm, "angular", remove=6).variant, "closed-form")
    >>> perplexity(lm, texts.evaluation, variant=r.variant)
"""

from explorer.heal.registry import (COMMON_PARAMS, MODES, HealContext, HealMode, HealOutcome,
                                    HealResult, get_mode, heal, list_modes, register_mode)
# importing the modules registers the modes, in this order
from explorer.heal import closed_form, linear_patch, prune_comp, layerwise, distill, tail_finetune  # noqa: F401,E402,E501

__all__ = ["COMMON_PARAMS", "MODES", "HealContext", "HealMode", "HealOutcome", "HealResult",
           "get_mode", "heal", "list_modes", "register_mode"]
