"""`latentserve eval generation`: the quality tables of docs/benchmarks.md, measured on the shipped graphs.

Each generator's newest version in the repository runs in onnxruntime on the latents the gateway draws
for seed 0 (samples 0..n-1); the LeNet feature network scores them against the 10k test images, beside
the real-vs-real floor. The class-conditional model is also scored as truncation goes from none to 0.5.
A second table measures diversity and realism apart (latentserve.diversity: MS-SSIM, SWD, nearest
training images) without truncation; `--grids` saves each model's samples nearest to a training image, and
`--update-cards` adds that table's figures to the cards of versions exported before the exporter wrote them.
"""
import json
from pathlib import Path

from latentserve import diversity, quality
from latentserve.contract import GENERATE as CAPABILITY
from latentserve.datasets import load_mnist
from latentserve.files import write_atomically
from latentserve.grid import save_grid
from latentserve.repository import CARD_FILE, read_card, read_repository

TRUNCATIONS = (None, 1.0, 0.75, 0.5)
NEAREST_PAIRS = 16


def main(repository_root: Path, models: list[str], samples: int, grids: Path | None = None, update_cards: bool = False) -> None:
    data = load_mnist()
    features = quality.FeatureNetwork(repository_root)
    floor = quality.real_floor(data, features, samples)
    print(f"feature network: {quality.FEATURE_ENTRY} v{features.version}; {samples} samples per row, seed 0\n")
    print("| model | version | truncation | FID | FID / floor | classifier score | class accuracy | intra-class diversity |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| real: {samples} train vs 10k test images | | | {floor['fid']:.3f} | 1 | {floor['classifier_score']:.3f} | "
          f"{floor['class_accuracy']:.2%} | {floor['intra_class_diversity']:.3f} |")
    entries = {e.model: e for e in read_repository(repository_root).values() if e.capability == CAPABILITY}
    samples_by_model = {}
    for model in models:
        entry = entries[model]
        for truncation in TRUNCATIONS if entry.classes else (None,):
            images, labels = quality.generate(quality.entry_runner(entry), entry.latent_dim, entry.classes, truncation, samples)
            if truncation is None:
                samples_by_model[model] = images, labels
            m = quality.score_samples(images, labels, data, features)
            conditional = f"{m['class_accuracy']:.2%} | {m['intra_class_diversity']:.3f}" if entry.classes else " | "
            print(f"| {model} | {entry.versions[0]} | {truncation or 'none'} | {m['fid']:.3f} | {m['fid'] / floor['fid']:.1f} | "
                  f"{m['classifier_score']:.3f} | {conditional} |", flush=True)

    print(f"\nDiversity and realism apart: pair MS-SSIM ({diversity.PAIRS} pairs, within each class for a conditional "
          f"model; lower is more varied), SWD x 1000 at 28/14/7 pixels to {samples} test images, the median pixel "
          "distance to the nearest training image and the share of samples nearer than 99% of test images are\n")
    print("| model | MS-SSIM | real MS-SSIM | SWD 28 / 14 / 7 | real SWD 28 / 14 / 7 | nearest training image, median | "
          "real (test) | share nearer than real's 1st percentile |")
    print("|---|---|---|---|---|---|---|---|")
    for model, (images, labels) in samples_by_model.items():
        nearest = diversity.nearest_distances(images, data.train.images)  # for the measures and the grid
        m = diversity.sample_measures(images, labels, data, nearest)
        real = diversity.real_measures(data, samples, labels is not None)
        swd = " / ".join(f"{m[f'swd_{size}']:.1f}" for size in diversity.LEVEL_SIZES)
        real_swd = " / ".join(f"{real[f'swd_{size}']:.1f}" for size in diversity.LEVEL_SIZES)
        print(f"| {model} | {m['ms_ssim']:.3f} | {real['ms_ssim']:.3f} | {swd} | {real_swd} | {m['nearest_training_median']:.2f} | "
              f"{m['nearest_training_median_real']:.2f} | {m['nearer_than_real_1st_percentile']:.2%} |", flush=True)
        if grids:
            grids.mkdir(parents=True, exist_ok=True)
            pairs = diversity.closest_pairs(images, data.train.images, nearest, NEAREST_PAIRS)
            save_grid(pairs, grids / f"nearest_{model}.png", columns=NEAREST_PAIRS)
        if update_cards:
            _add_to_card(entries[model].version_path(entries[model].versions[0]), m | {f"real_{k}": v for k, v in real.items()})


def _add_to_card(version_path: Path, metrics: dict[str, float]) -> None:
    """The card's metrics, with `metrics` added, written atomically (the card is not among its checksummed files)."""
    card = read_card(version_path)
    card["metrics"] |= metrics
    write_atomically(version_path / CARD_FILE, json.dumps(card, indent=2, allow_nan=False) + "\n")


def runs(checkpoints: list[Path]) -> None:
    """`latentserve eval generation --checkpoints ...`: trained GAN runs side by side (an ablation's table),
    each measured by its model's own evaluation (what its card would hold), with the config fields that
    differ from its model's defaults."""
    from benchmarks.runs import evaluated_runs  # torch: only this table needs it

    print("| run | options (non-default) | epochs | training minutes | FID | classifier score | MS-SSIM (real) | "
          "SWD 28 / 14 / 7 (real) | share nearer than real's 1st percentile |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, checkpoint, model, m in evaluated_runs(checkpoints, "GAN"):
        defaults = type(model.config)().model_dump()
        options = ", ".join(f"{k}={v}" for k, v in model.config.model_dump().items() if k != "epochs" and v != defaults[k]) or "-"
        minutes = sum(entry["seconds"] for entry in checkpoint["history"]) / 60
        swd = " / ".join(f"{m[f'swd_{size}']:.1f}" for size in diversity.LEVEL_SIZES)
        real_swd = " / ".join(f"{m[f'real_swd_{size}']:.1f}" for size in diversity.LEVEL_SIZES)
        print(f"| {path} | {options} | {checkpoint['epoch']} | {minutes:.0f} | {m['fid']:.2f} | {m['classifier_score']:.3f} | "
              f"{m['ms_ssim']:.3f} ({m['real_ms_ssim']:.3f}) | {swd} ({real_swd}) | {m['nearer_than_real_1st_percentile']:.2%} |", flush=True)
