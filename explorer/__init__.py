"""Layer Explorer: see which transformer layers repeat each other, merge or drop them, and measure
what that does to the model.

The package follows the pipeline, one module per stage:

    load      -> explorer.load      load_model(spec)            a LoadedModel (model + tokenizer)
    text      -> explorer.text      load_texts(source)          disjoint calibration / evaluation
    probe     -> explorer.probe     probe(lm, text)             residual stream at every layer
    measure   -> explorer.measure   similarity(probe, measure)  layer-by-layer matrices
                 explorer.damage    damage_map(lm, ids)         measured cost of each removal
                 explorer.trust     trust_table(map, matrices)  how far each similarity predicts it
    plan      -> explorer.methods   compress(lm, method, ...)   which layers, with which method
    apply     -> explorer.variant   Variant                     layer edits without reloading
    heal      -> explorer.heal      heal(variant, mode)         repair a compressed variant
    evaluate  -> explorer.evaluate  perplexity(lm, text)        with the protocol stated
    export    -> explorer.export    export(variant, folder)     a folder transformers loads
    also      -> explorer.tasks     evaluate_tasks(lm, tasks)   lm-eval accuracy, dense vs variant
                 explorer.capability, explorer.gguf_export, explorer.profiles (docs/evaluation.md)
                 explorer.speed     measure_speed(lm, variant)  measured speed-up and memory
                 explorer.gate      quality_gate(lm, method, R) largest cut within R x dense

Example:
    >>> import explorer as ex
    >>> lm = ex.load_model("smollm2-135m")
    >>> texts = ex.load_texts("wiki")
    >>> v = ex.Variant.identity(lm).drop([14])
    >>> ex.perplexity(lm, texts.evaluation, variant=v).ppl
"""

from .errors import ExplorerError, LayerError, ModelLoadError, TextError
from explorer.evaluate import PPLResult, perplexity
from explorer.generate import generate
from .export import export
from .heal import HealResult, heal
from . import methods  # noqa: F401 (registers the methods and their recipe ops' replay)
from explorer.model import LoadedModel
from .loading import load_model
from .probe import ProbeResult, probe
from .recipe import Recipe, replay
from .text import Texts, load_texts
from .variant import NewLayer, Variant
from .capability import capability
from .gguf_export import export_gguf
from .profiles import compare_models
from .tasks import evaluate_tasks
from .speed import measure_speed
from .gate import quality_gate
from .damage import DamageMap, damage_map

__version__ = "0.1.0"

__all__ = [
    "ExplorerError", "LayerError", "ModelLoadError", "TextError", "PPLResult", "generate",
    "perplexity", "export", "heal", "HealResult", "LoadedModel", "load_model", "ProbeResult",
    "probe", "Recipe", "replay", "Texts", "load_texts", "NewLayer", "Variant", "__version__",
    "capability", "export_gguf", "compare_models", "evaluate_tasks", "measure_speed",
    "quality_gate", "DamageMap", "damage_map",
]
