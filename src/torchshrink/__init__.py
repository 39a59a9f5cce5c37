"""torchshrink: compress trained PyTorch models and measure the result honestly.

The public API on one screen. Each family adds its names in its own section below.
"""

import importlib

from torchshrink import data, models
from torchshrink.api import apply, factorize, quantize
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
    "evaluate_lm",
    "factorize",
    "fit",
    "get_method",
    "methods",
    "models",
    "prune",
    "quantize",
]

# --- measuring: size, MACs, latency, task metrics ---
from torchshrink.measure import Report, compare, evaluate_lm, measure  # noqa: E402

__all__ += ["Report", "compare", "measure"]
# --- the artifact file ---
from torchshrink import codec  # noqa: E402
from torchshrink.codec import load, read_info, save  # noqa: E402

__all__ += ["codec", "load", "read_info", "save"]
# --- pruning ---
from torchshrink.prune import (  # noqa: E402
    ChannelPruning,
    GradualPruning,
    HeadPruning,
    MagnitudePruning,
    NMPruning,
    SparseExecution,
    SparsityRegularization,
)

__all__ += ["ChannelPruning", "GradualPruning", "HeadPruning", "MagnitudePruning", "NMPruning", "SparseExecution",
            "SparsityRegularization"]
# --- quantization ---
from torchshrink import quant  # noqa: E402
from torchshrink.quant import (  # noqa: E402
    QAT,
    Cast,
    DynamicInt8,
    MixedPrecision,
    SmoothQuant,
    StaticInt8,
    WeightOnly,
    quant_diagnostics,
)

__all__ += ["QAT", "Cast", "DynamicInt8", "MixedPrecision", "SmoothQuant", "StaticInt8", "WeightOnly", "quant",
            "quant_diagnostics"]
# --- weight sharing, entropy coders, recipes ---
from torchshrink.cluster import KMeansSharing, ProductQuantization  # noqa: E402
from torchshrink.codec import context, entropy_encodings  # noqa: E402,F401  (register ans/huffman/sparse/sparse_ctx)
from torchshrink.recipe import CompressResult, Recipe, compress, load_recipe  # noqa: E402

__all__ += ["CompressResult", "KMeansSharing", "ProductQuantization", "Recipe", "compress", "load_recipe"]
# --- low-rank factorization ---
from torchshrink import lowrank  # noqa: E402
from torchshrink.lowrank import SvdFactorization  # noqa: E402

__all__ += ["SvdFactorization", "lowrank"]
# --- distillation ---
from torchshrink import distill  # noqa: E402
from torchshrink.distill import Distillation  # noqa: E402

__all__ += ["Distillation", "distill"]
# --- export to runtimes ---
# `ts.export` is the function; the subpackage stays importable as torchshrink.export.<module>.
from torchshrink.export import ExportResult, ParityError, load_pt2  # noqa: E402

__all__ += ["ExportResult", "ParityError", "export", "load_pt2"]
# --- plan: the recipe within a size/latency budget, measured ---
from torchshrink.plan import PlanResult, default_candidates  # noqa: E402

__all__ += ["PlanResult", "default_candidates", "plan"]

# --- coverage: what each apply changed and skipped, per layer ---
from torchshrink.nn.coverage import Coverage, coverage  # noqa: E402

__all__ += ["Coverage", "coverage"]


# --- inference form: the compressed model as this machine runs it fastest / smallest ---
from torchshrink.infer import for_inference  # noqa: E402
from torchshrink.infer.load import load  # noqa: E402,F811  (codec's load plus inference=True)

__all__ += ["for_inference"]

# --- HTML report: tables, plots, energy estimate ---
__all__ += ["report"]

# The verbs prune, cluster, export, plan and report are their (callable) subpackages, so both
# `ts.prune(model, config)` and `import torchshrink.prune as tp` work (see _verb_module).
prune = importlib.import_module("torchshrink.prune")  # noqa: F811
cluster = importlib.import_module("torchshrink.cluster")  # noqa: F811
export = importlib.import_module("torchshrink.export")  # noqa: F811
plan = importlib.import_module("torchshrink.plan")  # noqa: F811
report = importlib.import_module("torchshrink.report")
