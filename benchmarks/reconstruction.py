"""`latentserve eval reconstruction --checkpoints RUN...`: Hinton & Salakhutdinov's comparison, the deep
autoencoder (pretrained or not) against PCA with as many components as its code, by squared
reconstruction error per test image (pixels in [0, 1]), with each run's retrieval mAP beside it; the
binary and sparse variants (training/deep_autoencoder.py) measure the same way.
The runs are measured in PyTorch (the served graph is the encoder alone); a shipped version's card holds
the same figures, computed the same way at export."""
from pathlib import Path

from benchmarks.runs import evaluated_runs

PUBLISHED = "Hinton & Salakhutdinov 2006, MNIST: autoencoder 3.00, logistic PCA 8.01, PCA 13.87"


def main(checkpoints: list[Path]) -> None:
    runs = evaluated_runs(checkpoints, "deep_autoencoder")
    print(f"{PUBLISHED}\n")
    print("| run | code | within 0.1 of 0 or 1 | pretrained | epochs (pretraining + fine-tuning) | squared error / test image | PCA, same components | PCA / autoencoder | retrieval mAP (code) | (bits) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path, checkpoint, model, metrics in runs:
        config = model.config
        pretraining = len(config.hidden) * config.pretrain_epochs_per_layer if config.pretrained else 0
        saturated = f"{metrics['code_saturated']:.1%}" if "code_saturated" in metrics else "-"
        print(f"| {path} | {_code(config)} | {saturated} | {config.pretrained} | {pretraining} + {checkpoint['epoch'] - pretraining} | {metrics['test_squared_error']:.2f} | "
              f"{metrics['pca_test_squared_error']:.2f} | {metrics['pca_test_squared_error'] / metrics['test_squared_error']:.2f}x | "
              f"{metrics['retrieval_code_map']:.2%} | {metrics['retrieval_bits_map']:.2%} |", flush=True)


def _code(config) -> str:
    if not config.logistic_code:
        return f"{config.hidden[-1]} linear"
    extras = [f"noise {config.code_noise:g}"] * bool(config.code_noise) + [f"sparsity {config.sparsity:g}"] * bool(config.sparsity)
    return f"{config.hidden[-1]} logistic, {', '.join(extras)}"
