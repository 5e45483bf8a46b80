"""`latentserve eval generation`: the quality table of docs/benchmarks.md, measured on the shipped graphs.

Each generator's newest version in the repository runs in onnxruntime on the latents the gateway draws
for seed 0 (samples 0..n-1); the LeNet feature network scores them against the 10k test images, beside
the real-vs-real floor. The class-conditional model is also scored as truncation goes from none to 0.5.
"""
from pathlib import Path

from latentserve import quality
from latentserve.contract import GENERATE as CAPABILITY
from latentserve.datasets import load_mnist
from latentserve.repository import read_repository

TRUNCATIONS = (None, 1.0, 0.75, 0.5)


def main(repository_root: Path, models: list[str], samples: int) -> None:
    data = load_mnist()
    features = quality.FeatureNetwork(repository_root)
    floor = quality.real_floor(data, features, samples)
    print(f"feature network: {quality.FEATURE_ENTRY} v{features.version}; {samples} samples per row, seed 0\n")
    print("| model | version | truncation | FID | FID / floor | classifier score | class accuracy | intra-class diversity |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| real: {samples} train vs 10k test images | | | {floor['fid']:.3f} | 1 | {floor['classifier_score']:.3f} | "
          f"{floor['class_accuracy']:.2%} | {floor['intra_class_diversity']:.3f} |")
    entries = {e.model: e for e in read_repository(repository_root).values() if e.capability == CAPABILITY}
    for model in models:
        entry = entries[model]
        for truncation in TRUNCATIONS if entry.classes else (None,):
            m = quality.evaluate_entry(entry, data, features, truncation, samples)
            conditional = f"{m['class_accuracy']:.2%} | {m['intra_class_diversity']:.3f}" if entry.classes else " | "
            print(f"| {model} | {entry.versions[0]} | {truncation or 'none'} | {m['fid']:.3f} | {m['fid'] / floor['fid']:.1f} | "
                  f"{m['classifier_score']:.3f} | {conditional} |", flush=True)
