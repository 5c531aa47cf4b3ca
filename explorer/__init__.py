"""Layer Explorer: see which transformer layers repeat each other, merge or drop them, and measure
what that does to the model.

The package is the pipeline, one folder per stage in the order a variant travels, on a core
that every stage stands on (docs/architecture.md has the map, module by module):

    load/      load_model(spec)              a checked LoadedModel (model + tokenizer + adapter)
    probe/     load_texts(source), probe()   calibration text -> the residual stream at every layer
    measure/   similarity(), damage_map()    layer-by-layer matrices; the measured cost of removals
    plan/      compress(lm, method, ...)     which layers, with which method (one module each)
    apply/     Recipe, replay()              the ops that make a variant, replayed bit for bit
    heal/      heal(variant, mode)           repair a compressed variant (one module per mode)
    evaluate/  perplexity(), measure_speed() perplexity with its protocol, generations, tasks, speed
    export/    export(), export_gguf()       a folder transformers loads, or one GGUF file
    report/    the HTML report               one self-contained page
    core/      Variant, run_backbone, ...    the executor, weights, caches, params, progress, errors
    cli/, ui/  the command line and the web app, which only call the stages

Example:
    >>> import explorer as ex
    >>> lm = ex.load_model("smollm2-135m")
    >>> texts = ex.load_texts("wiki")
    >>> v = ex.Variant.identity(lm).drop([14])
    >>> ex.perplexity(lm, texts.evaluation, variant=v).ppl
"""

from explorer.core.errors import ExplorerError, LayerError, ModelLoadError, TextError
from explorer.evaluate.perplexity import PPLResult, perplexity
from explorer.evaluate.generate import generate
from explorer.export.folder import export
from explorer.heal import HealResult, heal
import explorer.plan  # noqa: F401 (registers the methods and their recipe ops' replay)
from explorer.core.model import LoadedModel
from explorer.load.loader import load_model
from explorer.probe.probe import ProbeResult, probe
from explorer.apply.recipe import Recipe, replay
from explorer.probe.text import Texts, load_texts
from explorer.core.variant import NewLayer, Variant
from explorer.evaluate.capability import capability
from explorer.export.gguf import export_gguf
from explorer.measure.profiles import compare_models
from explorer.evaluate.tasks import evaluate_tasks
from explorer.evaluate.speed import measure_speed
from explorer.evaluate.gate import quality_gate
from explorer.measure.damage import DamageMap, damage_map

__version__ = "0.1.0"

__all__ = [
    "ExplorerError", "LayerError", "ModelLoadError", "TextError", "PPLResult", "generate",
    "perplexity", "export", "heal", "HealResult", "LoadedModel", "load_model", "ProbeResult",
    "probe", "Recipe", "replay", "Texts", "load_texts", "NewLayer", "Variant", "__version__",
    "capability", "export_gguf", "compare_models", "evaluate_tasks", "measure_speed",
    "quality_gate", "DamageMap", "damage_map",
]
