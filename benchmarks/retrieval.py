"""`latentserve bench retrieval`: the retrieval protocol for raw pixels, PCA, and the served encoders.

The encoders run from model_repository/ through onnxruntime, i.e. exactly the graphs the gateway serves.
"""
from pathlib import Path

import numpy as np
import onnxruntime

from latentserve import repository
from latentserve.datasets import load_mnist
from training import retrieval

PUBLISHED = (
    "Published mAP on MNIST, same protocol: PCA-ITQ about 41-45% and Deep Hashing about 43-47% at 16-64 bits "
    "(unsupervised hashing papers); IMSAT about 60% at 16 bits (Hu et al. 2017)."
)


def encode_with_onnx(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, bits) of (n, 28, 28) images from an encoder's model.onnx."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parts = [session.run(["code", "binary_code"], {"image": batch[:, None]}) for batch in np.array_split(images, len(images) // 1000 + 1)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run(repository_root: Path) -> list[tuple[str, int, dict[str, float]]]:
    data = load_mnist()
    split = retrieval.protocol(data)
    labels = (split.query_labels, split.gallery_labels)
    queries, gallery = split.queries.reshape(1000, -1), split.gallery.reshape(len(split.gallery), -1)
    rows = [("raw pixels, L2", 784, retrieval.retrieval_scores(retrieval.l2_distances(queries, gallery), *labels))]
    encoders = [e for e in repository.read_repository(repository_root).values() if e.capability == "encode"]
    for dim in sorted({o.dims[0] for e in encoders for o in e.outputs}):
        mean, directions = retrieval.pca_projection(data.train.images, dim)
        q, g = (queries - mean) @ directions, (gallery - mean) @ directions
        rows.append(("PCA, L2", dim, retrieval.retrieval_scores(retrieval.l2_distances(q, g), *labels)))
        rows.append(("PCA sign bits, Hamming", dim, retrieval.retrieval_scores(retrieval.hamming_distances(q > 0, g > 0), *labels)))
    for entry in encoders:
        version = entry.versions[0]
        path = entry.version_path(version) / repository.ONNX_FILE
        (query_code, query_bits), (gallery_code, gallery_bits) = encode_with_onnx(path, split.queries), encode_with_onnx(path, split.gallery)
        name = f"{entry.model} v{version}"
        rows.append((f"{name} code, L2", query_code.shape[1], retrieval.retrieval_scores(retrieval.l2_distances(query_code, gallery_code), *labels)))
        rows.append((f"{name} binary code, Hamming", query_bits.shape[1], retrieval.retrieval_scores(retrieval.hamming_distances(query_bits, gallery_bits), *labels)))
    return rows


def main(repository_root: Path) -> None:
    print("| representation | size | mAP | precision@100 |\n|---|---|---|---|")
    for name, size, scores in run(repository_root):
        print(f"| {name} | {size} | {scores['map']:.2%} | {scores['precision_at_100']:.2%} |")
    print(f"\n{PUBLISHED}")
