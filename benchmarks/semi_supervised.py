"""`latentserve eval propagation` and `latentserve eval classification`: the semi-supervised protocol's
figures (docs/benchmarks.md).

- propagation: label propagation (serving/label_propagation.py) over one kNN graph of the 50k training
  and 10k test images, from the protocol's labelled training images (training/semi_supervised.py), for
  raw pixels, PCA and the served encoders' codes; error on the test images, over several data seeds.
- classification: the test error of trained checkpoints (one per data seed), grouped by method and
  number of labels, and of the classifiers in the model repository (run by onnxruntime, as served).
"""
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from benchmarks.retrieval import encode_with_onnx
from latentserve import repository
from serving.label_propagation import knn_graph, propagate
from latentserve.datasets import CLASSES, load_mnist
from training import retrieval
from training.evaluation import evaluate_classifier
from training.semi_supervised import SemiSupervisedConfig, labelled_indices
from training.train import load_checkpoint, load_model

PUBLISHED = (
    "Published test error with 100 labels: Kingma et al. 2014 (Table 1) M1+TSVM 11.82% (+-0.25), M2 11.97% "
    "(+-1.71), M1+M2 3.33% (+-0.14); Improved GAN (feature matching, Salimans et al. 2016) 0.93% (+-0.07); "
    "ADGM (Maaloe et al. 2016) 0.96% (+-0.02); Ladder network (Rasmus et al. 2015) 1.06% (+-0.37); Bad GAN "
    "(Dai et al. 2017) 0.80% (+-0.10)."
)


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2%} +- {deviation:.2%}"


def propagation(repository_root: Path, seeds: int, neighbours: int) -> None:
    data = load_mnist()
    images = np.concatenate([data.train.images, data.test.images])
    test = slice(len(data.train.labels), len(images))
    mean, directions = retrieval.pca_projection(data.train.images, 50)
    representations = {"raw pixels (784)": images.reshape(len(images), -1), "PCA (50)": (images.reshape(len(images), -1) - mean) @ directions}
    for entry in repository.read_repository(repository_root).values():
        if entry.capability == "encode":
            version = entry.versions[0]
            codes, _ = encode_with_onnx(entry.version_path(version) / repository.ONNX_FILE, images)
            representations[f"{entry.model} v{version} codes ({codes.shape[1]})"] = codes
    labelled = [labelled_indices(data.train.labels, 10, seed) for seed in range(seeds)]
    print(f"| codes | method | test error, 100 labels ({seeds} data seeds) |\n|---|---|---|")
    for name, codes in representations.items():
        graph = knn_graph(codes, neighbours)
        for method in ("harmonic", "spreading"):
            errors = []
            for chosen in labelled:
                scores = propagate(graph, chosen, data.train.labels[chosen], CLASSES, method)
                errors.append(float((scores[test].argmax(1) != data.test.labels).mean()))
            print(f"| {name} | {method} | {_spread(errors)} ({', '.join(f'{e:.2%}' for e in errors)}) |", flush=True)
    print(f"\nkNN graph: k = {neighbours}, Gaussian weights; graph over the 60k train + test images.")


def classification(repository_root: Path, checkpoints: list[Path]) -> None:
    torch.set_num_threads(2)
    data = load_mnist()
    runs = defaultdict(list)
    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        config = checkpoint["config"]
        if checkpoint["data_sha256"] != data.sha256:
            raise ValueError(f"{path} was trained on other data ({checkpoint['data_sha256']})")
        model = load_model(checkpoint)
        if not isinstance(model.config, SemiSupervisedConfig):
            raise ValueError(f"{path} holds {checkpoint['model']}, not a semi-supervised model")
        errors = evaluate_classifier(model, data)
        seconds = sum(epoch["seconds"] for epoch in checkpoint["history"])
        runs[(checkpoint["model"], 10 * config["labels_per_class"])].append((config["data_seed"], errors, checkpoint["epoch"], seconds))
    if runs:
        print("| method | labels | test error, mean +- sd | per data seed (test / valid error, epochs, training minutes) |\n|---|---|---|---|")
    for (name, labels), results in sorted(runs.items()):
        detail = "; ".join(
            f"seed {seed}: {e['test_error']:.2%} / {e['valid_error']:.2%}, {epochs} ep, {seconds / 60:.0f} min"
            for seed, e, epochs, seconds in sorted(results, key=lambda r: r[0])
        )
        print(f"| {name} | {labels} | {_spread([e['test_error'] for _, e, _, _ in results])} | {detail} |")
    print("\n| shipped classifier | version | test error (onnxruntime, 10k images) |\n|---|---|---|")
    for entry in repository.read_repository(repository_root).values():
        if entry.capability == "classify":
            for version in entry.versions:
                session = onnxruntime.InferenceSession(str(entry.version_path(version) / repository.ONNX_FILE), providers=["CPUExecutionProvider"])
                (probabilities,) = session.run(["probabilities"], {"image": data.test.images[:, None]})
                print(f"| {entry.model} | {version} | {(probabilities.argmax(1) != data.test.labels).mean():.2%} |")
    print(f"\n{PUBLISHED}")
