"""torchshrink: compress trained PyTorch models and measure the result honestly.

The public API on one screen. Each family adds its names in its own section below.
"""

from torchshrink import data, models
from torchshrink.api import apply, cluster, factorize, prune, quantize
from torchshrink.config import Config
from torchshrink.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    ShrinkError,
    UnsupportedModelError,
)
from torchshrink.registry import get_method, methods
from torchshrink.train import Callback, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # plumbing
    "ArtifactError",
    "Callback",
    "Config",
    "ConfigError",
    "DataError",
    "ShrinkError",
    "UnsupportedModelError",
    "apply",
    "cluster",
    "data",
    "evaluate",
    "factorize",
    "fit",
    "get_method",
    "methods",
    "models",
    "prune",
    "quantize",
]

# --- measure (issue 2) ---
from torchshrink.measure import Report, compare, measure  # noqa: E402

__all__ += ["Report", "compare", "measure"]
# --- artifact (issue 2) ---
from torchshrink import codec  # noqa: E402
from torchshrink.codec import load, read_info, save  # noqa: E402

__all__ += ["codec", "load", "read_info", "save"]
# --- prune (issue 3) ---
from torchshrink.prune import (  # noqa: E402
    ChannelPruning,
    GradualPruning,
    MagnitudePruning,
    NMPruning,
    SparseExecution,
    SparsityRegularization,
)

__all__ += ["ChannelPruning", "GradualPruning", "MagnitudePruning", "NMPruning", "SparseExecution",
            "SparsityRegularization"]
# --- quant (issue 4) ---
from torchshrink import quant  # noqa: E402
from torchshrink.quant import (  # noqa: E402
    QAT,
    Cast,
    DynamicInt8,
    MixedPrecision,
    StaticInt8,
    WeightOnly,
    quant_diagnostics,
)

__all__ += ["QAT", "Cast", "DynamicInt8", "MixedPrecision", "StaticInt8", "WeightOnly", "quant",
            "quant_diagnostics"]
# --- cluster / codec / recipe (issue 5) ---
from torchshrink.cluster import KMeansSharing  # noqa: E402
from torchshrink.codec import entropy_encodings  # noqa: E402,F401  (registers ans/huffman/sparse)
from torchshrink.recipe import CompressResult, Recipe, compress, load_recipe  # noqa: E402

__all__ += ["CompressResult", "KMeansSharing", "Recipe", "compress", "load_recipe"]
# --- lowrank (issue 6) ---
from torchshrink import lowrank  # noqa: E402
from torchshrink.lowrank import SvdFactorization  # noqa: E402

__all__ += ["SvdFactorization", "lowrank"]
# --- distill (issue 7) ---
from torchshrink import distill  # noqa: E402
from torchshrink.distill import Distillation  # noqa: E402

__all__ += ["Distillation", "distill"]
# --- export (issue 8) ---
# `ts.export` is the function; the subpackage stays importable as torchshrink.export.<module>.
from torchshrink.export import ExportResult, ParityError, load_pt2  # noqa: E402
from torchshrink.export import export as export  # noqa: E402

__all__ += ["ExportResult", "ParityError", "export", "load_pt2"]
# --- plan: the recipe within a size/latency budget, measured ---
from torchshrink.plan import PlanResult, default_candidates, plan  # noqa: E402

__all__ += ["PlanResult", "default_candidates", "plan"]

# --- coverage: what each apply changed and skipped, per layer ---
from torchshrink.nn.coverage import Coverage, coverage  # noqa: E402

__all__ += ["Coverage", "coverage"]

# --- the verbs win over same-named subpackages ---
# Importing torchshrink.prune / .cluster / .export binds those names on this package to the
# subpackages; the public names are the functions, so bind them last. The subpackages stay
# importable by their full names (sys.modules), e.g. `from torchshrink.prune import PruningMask`.
from torchshrink.api import cluster, prune  # noqa: E402,F811
from torchshrink.export import export  # noqa: E402,F811
from torchshrink.plan import plan  # noqa: E402,F811
