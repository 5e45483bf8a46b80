"""`latentserve eval reconstruction --checkpoints RUN...`: Hinton & Salakhutdinov's comparison, the deep
autoencoder (pretrained or not) against PCA with as many components as its code, by squared
reconstruction error per test image (pixels in [0, 1]), with each run's retrieval mAP beside it.
The runs are measured in PyTorch (the served graph is the encoder alone); a shipped version's card holds
the same figures, computed the same way at export."""
from pathlib import Path

from latentserve.datasets import load_mnist
from training.train import load_checkpoint, load_model

PUBLISHED = "Hinton & Salakhutdinov 2006, MNIST: autoencoder 3.00, logistic PCA 8.01, PCA 13.87"


def main(checkpoints: list[Path]) -> None:
    if not checkpoints:
        raise SystemExit("name the deep_autoencoder runs to measure (--checkpoints runs/deep_autoencoder/checkpoint.pt ...)")
    data = load_mnist()
    print(f"{PUBLISHED}\n")
    print("| run | pretrained | epochs (pretraining + fine-tuning) | squared error / test image | PCA, same components | PCA / autoencoder | retrieval mAP (code) | (bits) |")
    print("|---|---|---|---|---|---|---|---|")
    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        model = load_model(checkpoint)
        metrics = model.evaluate(data)
        config = model.config
        pretraining = len(config.hidden) * config.pretrain_epochs_per_layer if config.pretrained else 0
        print(f"| {path} | {config.pretrained} | {pretraining} + {checkpoint['epoch'] - pretraining} | {metrics['test_squared_error']:.2f} | "
              f"{metrics['pca_test_squared_error']:.2f} | {metrics['pca_test_squared_error'] / metrics['test_squared_error']:.2f}x | "
              f"{metrics['retrieval_code_map']:.2%} | {metrics['retrieval_bits_map']:.2%} |", flush=True)
