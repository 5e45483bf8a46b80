"""`latentserve eval translation`: the translation tables of docs/benchmarks.md.

The shipped translators run in onnxruntime from the model repository, as served; `--checkpoints` adds
trained runs that are not shipped (the L1-only U-Net baseline), run in PyTorch. Measures: latentserve/quality.py
(`evaluate_paired`, `evaluate_unpaired`); data: latentserve/datasets.py. `--grids DIR` also writes the README's
grids: per shipped model, the first 16 test images of each direction, translated.
"""
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from latentserve import datasets, quality, repository
from latentserve.grid import save_grid
from latentserve.datasets import load_mnist
from latentserve.contract import IMAGE as IMAGE_INPUT, TRANSLATE as CAPABILITY, TRANSLATED as TRANSLATED_OUTPUT
from training.train import load_checkpoint, load_model

PAIRED, UNPAIRED = "edges2digit", ("mnist2uci", "uci2mnist")
GRID_IMAGES = 16


def _onnx_translator(entry: repository.Entry) -> quality.Translator:
    session = onnxruntime.InferenceSession(str(entry.version_path(entry.versions[0]) / repository.ONNX_FILE), providers=["CPUExecutionProvider"])
    return lambda images: np.concatenate([
        session.run([TRANSLATED_OUTPUT], {IMAGE_INPUT: images[i : i + quality.BATCH]})[0] for i in range(0, len(images), quality.BATCH)
    ])


def write_grid(translators: dict[str, quality.Translator], data, path: Path) -> None:
    """Rows: edge maps, translations, real digits (paired); or per direction: source images, translations,
    the translations translated back (unpaired)."""
    digits = data.test.images[:GRID_IMAGES, None]
    if PAIRED in translators:
        edges = datasets.edge_map(digits)
        rows = [edges, translators[PAIRED](edges), digits]
    else:
        uci = datasets.load_uci_digits().test.images[:GRID_IMAGES, None]
        there, back = (translators[d] for d in UNPAIRED)
        rows = [digits, there(digits), back(there(digits)), uci, back(uci), there(back(uci))]
    save_grid(np.concatenate(rows), path, GRID_IMAGES)


def main(repository_root: Path, checkpoints: list[Path], grids: Path | None = None) -> None:
    torch.set_num_threads(2)
    data = load_mnist()
    features = quality.FeatureNetwork(repository_root)
    paired, unpaired = [], []
    by_model: dict[str, dict[str, repository.Entry]] = {}
    for entry in repository.read_repository(repository_root).values():
        if entry.capability == CAPABILITY and entry.versions:
            by_model.setdefault(entry.model, {})[entry.graph] = entry
    for model, entries in sorted(by_model.items()):
        name = f"{model} v{next(iter(entries.values())).versions[0]} (shipped, onnxruntime)"
        if grids:
            write_grid({direction: _onnx_translator(entry) for direction, entry in entries.items()}, data, grids / f"{model}.png")
        if PAIRED in entries:
            paired.append((name, quality.evaluate_paired(_onnx_translator(entries[PAIRED]), data, features)))
        if set(UNPAIRED) <= set(entries):
            translators = [_onnx_translator(entries[direction]) for direction in UNPAIRED]
            unpaired.append((name, quality.evaluate_unpaired(*translators, data, features)))
    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        if checkpoint["data_sha256"] != data.sha256:
            raise ValueError(f"{path} was trained on other data ({checkpoint['data_sha256']})")
        model = load_model(checkpoint)
        minutes = sum(epoch["seconds"] for epoch in checkpoint["history"]) / 60
        name = f"{checkpoint['model']} {path.parent.name} ({checkpoint['epoch']} epochs, {minutes:.0f} min; PyTorch)"
        (paired if PAIRED in model.graphs() else unpaired).append((name, model.evaluate(data)))

    floor = quality.real_floor(data, features)
    print(f"Paired, {PAIRED}: the 10k test digits' edge maps translated back (MNIST classifier lenet v{features.version})\n")
    print("| model | L1 | SSIM | PSNR dB | class accuracy | FID to the test digits |\n|---|---|---|---|---|---|")
    print(f"| real digits (reference: test digits; FID: 10k training digits) | 0 | 1 | - | {floor['class_accuracy']:.2%} | {floor['fid']:.2f} |")
    for name, m in paired:
        print(f"| {name} | {m['l1']:.4f} | {m['ssim']:.4f} | {m['psnr']:.2f} | {m['class_accuracy']:.2%} | {m['fid']:.2f} |")
    print("\nUnpaired: 10k MNIST test digits -> UCI (scored by the UCI SVM), 500 UCI test digits -> MNIST (scored by lenet)\n")
    print("| model | direction | label preservation | identity map | cycle L1 | FID (500) | real floor | FID / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in unpaired:
        for d in UNPAIRED:
            print(f"| {name} | {d} | {m[f'{d}_accuracy']:.2%} | {m[f'{d}_identity_accuracy']:.2%} | {m[f'{d}_cycle_l1']:.4f} | "
                  f"{m[f'{d}_fid']:.2f} | {m[f'{d}_fid_floor']:.2f} | {m[f'{d}_fid'] / m[f'{d}_fid_floor']:.1f} |")
