"""Weight sharing: 1-D k-means (Lloyd's or exact optimal), product quantization (k-means over
sub-vectors), and their trainable codebooks."""

from torchshrink.cluster.codebook import Codebook
from torchshrink.cluster.kmeans import kmeans_1d, lloyd, optimal_1d
from torchshrink.cluster.kmeans_sharing import KMeansSharing, share_weights
from torchshrink.cluster.product_codebook import ProductCodebook
from torchshrink.cluster.product_quantization import ProductQuantization, product_quantize

__all__ = ["Codebook", "KMeansSharing", "ProductCodebook", "ProductQuantization", "kmeans_1d", "lloyd",
           "optimal_1d", "product_quantize", "share_weights"]

# `ts.cluster(model, config)`: this subpackage is also the verb (see torchshrink._verb_module).
from torchshrink._verb_module import make_callable  # noqa: E402
from torchshrink.api import cluster as _cluster  # noqa: E402

make_callable(__name__, _cluster)
