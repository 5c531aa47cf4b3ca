"""Layer-by-layer similarity matrices over the residual stream.

Convention (the whole project relies on it): every matrix is (L+1) x (L+1) over the layer
*boundaries* x_0..x_L of a `ProbeResult` (x_k is the input of layer k and the output of layer k-1;
x_L is taken before the final norm). Cell (a, b) with a < b compares the input of layer a with the
output of layer b-1, so it says how much the block of layers a..b-1 changes the representation.
The adjacent profile of layer i is cell (i, i+1) (length L). Matrices are symmetric, float32, CPU.

Measures (see docs/measures.md for formulas and how to read each heatmap):

    cosine   mean over tokens of cos(x_a[t], x_b[t])                  similarity, 1 on the diagonal
    bi       1 - cosine: ShortGPT's Block Influence                    distance, 0 on the diagonal
    angular  arccos(cos) / pi on each sample's last token, averaged    distance (Gromov et al.)
    cka      linear CKA over tokens (Kornblith et al. 2019)            similarity in [0, 1]
    npib     MKA's normalised mutual information of manifold embeddings (explorer.measure.npib)

Computation happens on the device of `pr.states` (the GPU when the probe ran there); results come
back on the CPU. Under ranks (`explorer.core.ranks`) every rank calls a measure on the same
probe and computes its share of the measure's chunks of tokens or rows (`ranks.share_items`);
the parts are combined in the one-process order, so the matrix is one process's bit for bit
(docs/measures.md, "Under ranks"). Token-level measures accept `max_tokens` (a seeded random subset of the recorded
tokens, the same for every layer) to bound time and memory on long calibration text.

One registry, `MEASURES` (name -> `Measure`), holds what the CLI, the app, the methods and the docs
need: title, direction (`higher_is_similar`), paper, description, the function and its declared
parameters (`explorer.core.params.Param`), validated centrally by `similarity` and `adjacent`.

Adding a measure: one function and one `register_measure` call (here or in a module imported
below), plus its test. Its name, parameters and help then appear in the CLI, the app, the methods'
`measure` choices and the docs table (`python -m explorer.cli.doc_tables`):

    >>> def _euclid(pr, max_tokens=None, seed=0): ...            # -> (L+1, L+1)
    >>> register_measure(Measure("euclid", "Mean token distance", False, "ours", "...", _euclid,
    ...                          params=(MAX_TOKENS, SEED)))

Example:
    >>> from explorer.measure.measures import MEASURES, similarity, adjacent
    >>> m = similarity(pr, "cosine")          # (L+1, L+1)
    >>> adjacent(pr, "bi")                    # (L,) ShortGPT's BI_i for every layer i
    >>> MEASURES["cka"].higher_is_similar
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from explorer.core.ranks import gather_items, share_items
from explorer.core.registry import Registry
from explorer.core.errors import ExplorerError
from explorer.measure.npib import POINTS, npib_matrix
from explorer.core.params import Param, help_text, markdown_table, resolve
from explorer.probe.probe import ProbeResult
from explorer.probe.token_select import select_tokens


@dataclass(frozen=True)
class Measure:
    """One measure: what it is (for the UI, the CLI and the docs) and how to compute it."""

    name: str                 # registry key: "cosine", "bi", "angular", "cka", "npib"
    title: str                # short human title
    higher_is_similar: bool   # True for similarities, False for distances
    paper: str                # where it comes from
    description: str          # one paragraph: what it computes and how to read the heatmap
    matrix: Callable[..., torch.Tensor]    # (pr, **params) -> (L+1, L+1)
    params: tuple[Param, ...] = ()         # keyword parameters, declared once
    adjacent: Callable[..., torch.Tensor] | None = None   # (pr, **params) -> (L,), when cheaper
    # parameter sets the shared tests run this measure with (tests/test_measure_measures.py, on a tiny
    # model's probe); the default, one set of defaults, suits most measures
    examples: tuple[dict, ...] = ({},)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def resolve(self, given: dict) -> dict:
        """Every parameter, from `given` or its default; ParamError for a bad name or value."""
        return resolve(self.params, given, self.name)


MEASURES: Registry[Measure] = Registry("measure")


def register_measure(m: Measure) -> Measure:
    """Add `m` to `MEASURES` under its name (a second registration under a name replaces it)."""
    return MEASURES.add(m.name, m)


def unregister_measure(name: str) -> None:
    MEASURES.remove(name)


def get_measure(name: str) -> Measure:
    return MEASURES.get_one(name)


# The registered names, read at each use: a `Param`'s choices that follow the registry, so a
# measure registered later is accepted and offered by every method.
MEASURE_NAMES: Sequence[str] = MEASURES.names()


def measure_param(default: str, help: str) -> Param:
    """The `measure` parameter of a method: one of the registered measures."""
    return Param("measure", str, default, help, choices=MEASURE_NAMES, label="Measure",
                 choice_labels=measure_title)


def measure_title(name: str) -> str:
    """A measure's title for people ("Block Influence (1 - cosine)"), or the name if unknown."""
    found = MEASURES.get(name)
    return found.title if found is not None else name


def measures_help() -> str:
    """Every registered measure with its parameters, for the CLI's help."""
    return help_text([(m.name, m.title, m.params) for m in MEASURES.values()])


def measures_table() -> str:
    """The Markdown table of every registered measure's parameters (docs/measures.md)."""
    return markdown_table([(m.name, m.params) for m in MEASURES.values()], "measure")


def most_similar(values: Sequence[float], measure: str) -> list[int]:
    """Indices of `values` (scores of `measure`), most similar first, ties lower index first:
    the highest values of a similarity, the lowest of a distance."""
    sign = 1.0 if get_measure(measure).higher_is_similar else -1.0
    return sorted(range(len(values)), key=lambda i: (-sign * values[i], i))


# ----------------------------------------------------------------------------------------------
# helpers

def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; an all-zero row stays zero (its cosine with anything is 0)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _chunk(L1: int, width: int, budget: int = 2 ** 23) -> int:
    """How many tokens to process at once so that an (L1, n, width) float32 block stays small."""
    return max(1, budget // max(1, L1 * width))


def _symmetric(m: torch.Tensor) -> torch.Tensor:
    return ((m + m.T) / 2).float().cpu()


# ----------------------------------------------------------------------------------------------
# the measures; each returns the (L+1, L+1) matrix

def cosine_matrix(states: torch.Tensor) -> torch.Tensor:
    """(L+1, N, H) -> (L+1, L+1): mean over tokens of cos(x_a[t], x_b[t]).

    sum_t <u_a[t], u_b[t]> is the dot product of the flattened unit-norm states, so the whole
    matrix is one Gram product per chunk of tokens (no loop over layer pairs).
    """
    L1, N, H = states.shape
    acc = torch.zeros(L1, L1, dtype=torch.float64, device=states.device)
    step = _chunk(L1, H)
    los = range(0, N, step)
    parts = {}
    for i in share_items([min(step, N - lo) for lo in los]):     # ranks: this one's chunks
        u = _unit(states[:, los[i]:los[i] + step].float()).reshape(L1, -1)   # (L+1, n*H)
        parts[i] = (u @ u.T).double()
    for part in gather_items(parts, len(los), acc.device):       # chunk order: one sum
        acc += part
    m = acc / N
    m.fill_diagonal_(1.0)
    return _symmetric(m)


def angular_matrix(last: torch.Tensor) -> torch.Tensor:
    """(L+1, B, H) last-token states -> (L+1, L+1): mean over samples of arccos(cos) / pi."""
    # float64: arccos is steep near 1, float32 rounding would read as an angle of ~1e-4
    u = _unit(last.double())                                  # (L+1, B, H)
    cos = torch.einsum("asd,bsd->sab", u, u).clamp(-1.0, 1.0)  # (B, L+1, L+1)
    m = (torch.arccos(cos) / torch.pi).mean(0)
    m.fill_diagonal_(0.0)
    return _symmetric(m)


def cka_matrix(states: torch.Tensor) -> torch.Tensor:
    """(L+1, N, H) -> (L+1, L+1) linear CKA between the centred token clouds of every pair.

    CKA(X, Y) = ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F) with X, Y centred over tokens. The
    cross term ||X^T Y||_F^2 equals <X X^T, Y Y^T>_F, so it can be computed two ways:
      features: one (H, H) product per pair,         cost ~ (L+1)(L+2)/2 * N * H^2
      Grams:    the rows of every (N, N) Gram, chunked, cost ~ (L+1) * N^2 * H / 2
    (a Gram is symmetric: only the blocks on and right of the diagonal are formed). We take the
    cheaper; the Gram path keeps only an (L+1, m, N) block of rows in memory.
    """
    L1, N, H = states.shape
    x = states.float()
    x = x - x.mean(dim=1, keepdim=True)                        # centre every layer over tokens
    hsic = torch.zeros(L1, L1, dtype=torch.float64, device=x.device)
    parts = {}
    if (L1 + 1) * H <= N:          # feature cross-covariances are cheaper
        for a in share_items([L1 - a for a in range(L1)]):     # ranks: this one's rows
            c = torch.einsum("nh,bng->bhg", x[a], x[a:])       # (L+1-a, H, H)
            parts[a] = c.double().pow(2).sum(dim=(1, 2))           # (L+1-a,)
        for a, row in enumerate(gather_items(parts, L1, hsic.device)):
            hsic[a, a:] = row
            hsic[a:, a] = row
    else:                            # row blocks of the Gram matrices, upper triangle only
        step = _chunk(L1, N)
        los = range(0, N, step)
        for i in share_items([min(step, N - lo) * (N - lo) for lo in los]):   # ranks: a share
            lo, hi = los[i], min(N, los[i] + step)
            rows = torch.matmul(x[:, lo:hi], x[:, lo:].transpose(1, 2))  # (L+1, m, N-lo)
            diag = rows[:, :, :hi - lo].reshape(L1, -1)                  # block on the diagonal
            upper = rows[:, :, hi - lo:].reshape(L1, -1)                 # right of it: counts twice
            parts[i] = (diag @ diag.T).double() + 2 * (upper @ upper.T).double()
        for part in gather_items(parts, len(los), hsic.device):      # chunk order: one sum
            hsic += part
    norm = hsic.diagonal().clamp_min(1e-300).sqrt()           # (L+1,) ||X_a^T X_a||_F
    m = hsic / (norm[:, None] * norm[None, :])
    m.fill_diagonal_(1.0)
    return _symmetric(m.clamp(0.0, 1.0))


# ----------------------------------------------------------------------------------------------
# the registered measures: parameters, functions, descriptions

MAX_TOKENS = Param("max_tokens", int, None, "use at most this many recorded tokens, a seeded "
                   "random subset (none: all)", min=0, optional=True,
                   label="Tokens used")
SEED = Param("seed", int, 0, "seed of the token subset",
             label="Seed")
MAX_NORM_RATIO = Param("max_norm_ratio", float, 20.0, "leave out tokens whose norm exceeds this "
                       "many times the median at some boundary (massive activations); none keeps "
                       "them", min=0, optional=True,
                       label="Norm outlier ratio")


def _cosine(pr: ProbeResult, max_tokens: int | None = None, seed: int = 0) -> torch.Tensor:
    return cosine_matrix(select_tokens(pr.states, max_tokens, seed))


def _bi(pr: ProbeResult, max_tokens: int | None = None, seed: int = 0) -> torch.Tensor:
    return 1.0 - _cosine(pr, max_tokens, seed)


def _angular(pr: ProbeResult) -> torch.Tensor:
    return angular_matrix(pr.last)


def _cka(pr: ProbeResult, max_tokens: int | None = 2048, seed: int = 0,
         max_norm_ratio: float | None = 20.0) -> torch.Tensor:
    # one massive token outweighs thousands of ordinary ones in a covariance: leave them out
    return cka_matrix(select_tokens(pr.states, max_tokens, seed, max_norm_ratio))


def _npib_adjacent(pr: ProbeResult, **params) -> torch.Tensor:
    L = pr.num_layers
    m = npib_matrix(pr, pairs=[(i, i + 1) for i in range(L)], **params)
    return m.diagonal(offset=1).clone()


register_measure(Measure(
    "cosine", "Mean token cosine", True,
    "Men et al. 2024, ShortGPT, arXiv:2403.03853 (the cosine inside Block Influence)",
    "For every recorded token, the cosine between its residual-stream vector at boundary a and "
    "at boundary b, averaged over tokens. Cell (a, b) near 1 means the layers a..b-1 barely "
    "turn the direction of the representation: that block is a candidate for removal. A bright "
    "band along the diagonal over the middle layers is the usual sign of redundancy.",
    _cosine, (MAX_TOKENS, SEED)))
register_measure(Measure(
    "bi", "Block Influence (1 - cosine)", False,
    "Men et al. 2024, ShortGPT, arXiv:2403.03853",
    "One minus the mean token cosine. Its adjacent profile, cell (i, i+1), is ShortGPT's Block "
    "Influence BI_i: how much layer i changes the tokens' direction. Low values mark layers that "
    "do little (drawn bright: the heatmaps show alike as bright for every measure); ShortGPT "
    "deletes the layers with the lowest BI.",
    _bi, (MAX_TOKENS, SEED)))
register_measure(Measure(
    "angular", "Angular distance (last token)", False,
    "Gromov et al. 2024, The Unreasonable Ineffectiveness of the Deeper Layers, "
    "arXiv:2403.17887",
    "The angle between the last token's vectors at boundaries a and b, divided by pi (0 = same "
    "direction, 1 = opposite), averaged over calibration samples. Cell (i, i+n) is the distance "
    "Gromov et al. minimise to find the block of n consecutive layers to remove: look for the "
    "smallest distance, the brightest cell (bright = alike), on the n-th off-diagonal.",
    _angular))
register_measure(Measure(
    "cka", "Linear CKA", True,
    "Kornblith et al. 2019, Similarity of Neural Network Representations Revisited, "
    "arXiv:1905.00414",
    "Centred Kernel Alignment with a linear kernel between the token representations at two "
    "boundaries: 1 when one is a rotation and uniform scaling of the other, near 0 when they "
    "share no linear structure. Unlike cosine it ignores a shared offset and compares the "
    "geometry of the whole token cloud. Bright blocks show groups of layers that keep the "
    "same representation. Tokens with massive activations (norm over 20x the median) are "
    "left out: one of them would outweigh thousands of ordinary tokens.",
    _cka, (Param("max_tokens", int, 2048, "use at most this many recorded tokens, a seeded "
                 "random subset (none: all)", min=0, optional=True,
                 label="Tokens used"), SEED, MAX_NORM_RATIO)))
register_measure(Measure(
    "npib", "NPIB (MKA manifold information)", True,
    "Liu et al. 2024, Pruning via Merging: Compressing LLMs via Manifold Alignment Based "
    "Layer Merging (MKA), arXiv:2406.16330",
    "Each boundary's calibration points are embedded with diffusion maps (2 coordinates); "
    "the cell is the k-nearest-neighbour mutual information between two boundaries' "
    "embeddings, normalised so that a boundary with itself scores 1 and unrelated clouds "
    "score about 0. High values mean the two layers arrange the same points the same way. "
    "Estimates are noisier than cosine or CKA (a few hundred points, k neighbours).",
    npib_matrix,
    (Param("points", str, "tokens", "which calibration points: recorded tokens, each sample's "
           "mean state (pooled) or its last token", choices=POINTS,
           label="Points"),
     Param("num_points", int, 256, "number of calibration points", min=2,
           label="Number of points"),
     Param("sigma", float, None, "diffusion kernel scale (none: each cloud's median pairwise "
           "distance)", min=0, optional=True,
           label="Kernel scale (sigma)"),
     Param("alpha", float, 0.5, "density normalisation of the diffusion kernel", min=0, max=1,
           label="Density normalisation (alpha)"),
     Param("d", int, 2, "diffusion-map coordinates kept", min=1,
           label="Diffusion coordinates (d)"),
     Param("k", int, 3, "neighbours of the KSG mutual-information estimator", min=1,
           label="Neighbours (k)"),
     SEED, MAX_NORM_RATIO),
    adjacent=_npib_adjacent, examples=({"num_points": 60},)))


# ----------------------------------------------------------------------------------------------
# public API

def _check(pr: ProbeResult, measure: str, params: dict) -> tuple[Measure, dict]:
    m = get_measure(measure)
    full = m.resolve(params)
    if pr.num_layers < 1 or pr.num_tokens < 2:
        raise ExplorerError("the probe recorded too few layers or tokens to compare")
    return m, full


@torch.no_grad()
def similarity(pr: ProbeResult, measure: str, **params) -> torch.Tensor:
    """(L+1, L+1) float32 CPU matrix of `measure` between every pair of layer boundaries."""
    m, full = _check(pr, measure, params)
    return m.matrix(pr, **full)


@torch.no_grad()
def adjacent(pr: ProbeResult, measure: str, **params) -> torch.Tensor:
    """(L,) the cell (i, i+1) of `measure` for every layer i: what layer i alone does."""
    m, full = _check(pr, measure, params)
    if m.adjacent is not None:
        return m.adjacent(pr, **full)
    return m.matrix(pr, **full).diagonal(offset=1).clone()


def all_similarities(pr: ProbeResult, measures: Iterable[str] | None = None,
                     **params) -> dict[str, torch.Tensor]:
    """{name: (L+1, L+1) matrix} for several measures; each gets only the parameters it takes."""
    chosen = [get_measure(n) for n in (list(MEASURES) if measures is None else measures)]
    taken = {name for m in chosen for name in m.param_names}
    unused = sorted(set(params) - taken)
    if unused:
        raise ExplorerError(f"no selected measure takes the parameter(s) {', '.join(unused)}")
    out: dict[str, torch.Tensor] = {}
    for m in chosen:
        own = {k: v for k, v in params.items() if k in m.param_names}
        if m.name == "bi" and "cosine" in out:
            out[m.name] = 1.0 - out["cosine"]     # same parameters, no second pass over tokens
        else:
            out[m.name] = similarity(pr, m.name, **own)
    return out
