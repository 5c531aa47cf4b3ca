"""The plan stage: merge and prune methods of the field behind one registry.

Each method lives in its own module and registers itself; importing this package registers all of
them. See `registry` for the API and docs/methods.md for what each method computes.

Example:
    >>> from explorer.plan import compress, list_methods
    >>> plan = compress(lm, "laco", remove=6)
    >>> perplexity(lm, texts.evaluation, variant=plan.variant)
"""

from explorer.plan.registry import (METHODS, Method, Plan, PlanContext, compress, get_method,
                                    layers_for_ratio, list_methods, methods_help, methods_table,
                                    register, unregister)
# importing the modules registers the methods, in this order
from explorer.plan import drop, tail, shortgpt, angular, mka, laco, streamline, come  # noqa: F401,E402
from explorer.plan import sleb, blockpruner  # noqa: F401,E402
from explorer.plan import evopress  # noqa: F401,E402
from explorer.plan import damage  # noqa: F401,E402

__all__ = ["METHODS", "Method", "Plan", "PlanContext", "compress", "get_method",
           "layers_for_ratio", "list_methods", "methods_help", "methods_table", "register",
           "unregister"]
