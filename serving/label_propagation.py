"""Graph-based label propagation over codes: a sparse kNN graph with Gaussian (RBF) weights, and the
labels of a few nodes spread to the rest.

- `harmonic` (Zhu, Ghahramani & Lafferty 2003): the labelled nodes are clamped and every other node's
  class scores are the weighted mean of its neighbours'. This is the minimiser of the graph-Laplacian
  smoothness term sum_ij W_ij ||f_i - f_j||^2 = 2 tr(F^T L F) with the labelled rows fixed; its
  solution is L_uu F_u = W_ul Y_l.
- `spreading` (Zhou et al. 2004): F = (1 - alpha) (I - alpha S)^-1 Y with S = D^-1/2 W D^-1/2; labelled
  nodes may change their label if their neighbourhood disagrees.

Both are solved with conjugate gradients, one class at a time. A node in a component with no labelled
node gets no scores: confidence 0 and label -1. Both functions take `stop`, asked between blocks of the
kNN search and at every conjugate-gradient step: when it says so they raise Stopped, so a caller who
gave up (or whose deadline passed) stops costing CPU within one step.
"""
from collections.abc import Callable
from typing import Literal

import faiss
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

Method = Literal["harmonic", "spreading"]
SEARCH_BLOCK = 2048  # queries per FAISS call between two `stop` checks


class Stopped(Exception):
    """`stop` said so: the caller no longer waits."""


def _never() -> bool:
    return False


def _check(stop: Callable[[], bool]) -> None:
    if stop():
        raise Stopped


def knn_graph(codes: np.ndarray, k: int, stop: Callable[[], bool] = _never) -> sparse.csr_matrix:
    """Symmetric kNN graph: w_ij = exp(-d_ij^2 / sigma^2) if j is among i's k nearest (or i among j's),
    sigma^2 the mean squared distance to the k nearest (exact L2 search, FAISS)."""
    codes = np.ascontiguousarray(codes, np.float32)
    n = len(codes)
    k = min(k, n - 1)
    index = faiss.IndexFlatL2(codes.shape[1])
    index.add(codes)
    blocks = []
    for start in range(0, n, SEARCH_BLOCK):
        _check(stop)
        blocks.append(index.search(codes[start : start + SEARCH_BLOCK], k + 1))
    distances, neighbours = (np.concatenate(parts) for parts in zip(*blocks))
    distances, neighbours = distances[:, 1:], neighbours[:, 1:]  # a point is its own nearest: drop it
    scale = max(float(distances.mean()), 1e-12)
    weights = np.exp(-distances / scale)
    graph = sparse.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), k), neighbours.ravel())), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def smoothness(graph: sparse.csr_matrix, scores: np.ndarray) -> float:
    """sum_ij W_ij ||f_i - f_j||^2 = 2 tr(F^T L F): how much the scores change across edges."""
    laplacian = sparse.diags(np.asarray(graph.sum(1)).ravel()) - graph
    return float(2 * np.sum(scores * (laplacian @ scores)))


def propagate(
    graph: sparse.csr_matrix, labelled: np.ndarray, labels: np.ndarray, classes: int,
    method: Method = "harmonic", alpha: float = 0.99, stop: Callable[[], bool] = _never,
) -> np.ndarray:
    """Class scores [n, classes] of every node, rows summing to 1 (or 0 where no label reaches)."""
    n = graph.shape[0]
    seeds = np.zeros((n, classes))
    seeds[labelled, labels] = 1.0
    if method == "harmonic":
        unlabelled = np.setdiff1d(np.arange(n), labelled)
        degree = np.asarray(graph.sum(1)).ravel()
        laplacian_uu = sparse.diags(degree[unlabelled]) - graph[unlabelled][:, unlabelled]
        laplacian_uu = laplacian_uu + sparse.identity(len(unlabelled)) * 1e-9 * degree.mean()  # unseeded components
        right = graph[unlabelled][:, labelled] @ seeds[labelled]
        scores = seeds.copy()
        scores[unlabelled] = _solve(laplacian_uu.tocsr(), right, stop)
    elif method == "spreading":
        inverse_root = 1.0 / np.sqrt(np.maximum(np.asarray(graph.sum(1)).ravel(), 1e-12))
        normalised = sparse.diags(inverse_root) @ graph @ sparse.diags(inverse_root)
        scores = _solve((sparse.identity(n) - alpha * normalised).tocsr(), (1 - alpha) * seeds, stop)
    else:
        raise ValueError(f"unknown method {method!r}")
    scores = np.clip(scores, 0, None)
    totals = scores.sum(1, keepdims=True)
    return np.divide(scores, totals, out=np.zeros_like(scores), where=totals > 1e-12)


def _solve(matrix: sparse.csr_matrix, right: np.ndarray, stop: Callable[[], bool]) -> np.ndarray:
    columns = []
    for column in right.T:
        solution, _ = cg(matrix, column, rtol=1e-8, maxiter=2000, callback=lambda _: _check(stop))
        columns.append(solution)
    return np.stack(columns, 1)
