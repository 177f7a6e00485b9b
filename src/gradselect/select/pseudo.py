"""Pseudo-sources: clusters of examples by projected gradient, for data without source labels."""

from __future__ import annotations

import numpy as np

from gradselect.errors import GradselectError
from gradselect.estimate.estimator import FeatureArrays


def pseudo_sources(arrays: FeatureArrays, k: int, *, seed: int = 0, prefix: str = "cluster",
                   method: str = "agglomerative") -> FeatureArrays:
    """Regroup every source row into ``k`` pseudo-sources by clustering their projected gradients.

    Rows are L2-normalised first, so clusters follow gradient direction (what a
    source does to the model), not magnitude. ``method``: ``agglomerative`` (cosine
    distance, average linkage, as the paper's authors cluster chain-of-thought data) or
    ``kmeans`` (seeded). Cluster names are ``<prefix>-<i>``, numbered by each cluster's
    first row, so they do not depend on the algorithm's label order; with all source
    rows pooled, a user's own source labels play no part.

    Returns
    -------
    FeatureArrays
        The same rows, with ``source_rows`` replaced by the k clusters.
    """
    rows = np.concatenate(list(arrays.source_rows.values())) if arrays.source_rows else np.array([], dtype=int)
    rows = np.sort(rows)
    if k < 1 or k > len(rows):
        raise GradselectError(f"pseudo-sources: k must be between 1 and the {len(rows)} source rows, got {k}")
    x = np.asarray(arrays.g[rows], dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    elif method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(x) \
            if k > 1 else np.zeros(len(rows), dtype=int)
    else:
        raise GradselectError(f"unknown clustering method {method!r}; methods are agglomerative, kmeans")
    order = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    groups = {f"{prefix}-{order[lab]}": rows[labels == lab] for lab in sorted(order, key=order.get)}
    return FeatureArrays(arrays.g, arrays.b, groups, arrays.train_rows, arrays.dev_rows, arrays.param_norm, arrays.hidden)
