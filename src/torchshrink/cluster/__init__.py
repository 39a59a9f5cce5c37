"""Weight sharing: 1-D k-means (Lloyd's or exact optimal) and trainable codebooks."""

from torchshrink.cluster.codebook import Codebook
from torchshrink.cluster.kmeans import kmeans_1d, lloyd, optimal_1d
from torchshrink.cluster.kmeans_sharing import KMeansSharing, share_weights

__all__ = ["Codebook", "KMeansSharing", "kmeans_1d", "lloyd", "optimal_1d", "share_weights"]

# `ts.cluster(model, config)`: this subpackage is also the verb (see torchshrink._verb_module).
from torchshrink._verb_module import make_callable  # noqa: E402
from torchshrink.api import cluster as _cluster  # noqa: E402

make_callable(__name__, _cluster)
