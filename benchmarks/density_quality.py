"""`latentserve eval density`: the density model's likelihood and its out-of-distribution scores, as
docs/benchmarks.md reports them.

The shipped density graph runs in onnxruntime from the model repository, on images binarised as the
gateway binarises them (latentserve/density.py). In-distribution: the MNIST test images. Out of
distribution, each set against them (AUROC, out-of-distribution as the positive class):
- uniform noise (each pixel uniform in [0, 1]);
- constant images (one grey level per image, uniform in [0, 1]);
- inverted MNIST test images (1 - x);
- MNIST test images rotated by 90 degrees;
- the UCI optical digits (scikit-learn's bundled 8x8 scans) enlarged into MNIST's 20x20 box;
- printed digits: each TrueType font on this machine, each digit, framed as MNIST frames its digits
  (the glyph fitted into a 20x20 box, placed by its centre of mass in 28x28).
Scores: the raw likelihood (-log p(x)), the complexity-corrected score that is served, and the same
correction with PNG (Pillow, 1-bit) as the compressor, for comparison.
"""
import io
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from latentserve import repository
from latentserve.contract import DENSITY, IMAGE, LOG_LIKELIHOOD
from latentserve.datasets import load_mnist, load_uci_digits
from latentserve.density import NATS_PER_BIT, binarise, complexity_bits, ood_scores
from serving.settings import Settings

SET_SIZE = 2000  # images per synthetic set and per transformed MNIST set
FONT_DIRECTORIES = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
BATCH = 500


def glyphs() -> tuple[np.ndarray, int]:
    """Digits 0-9 in every TrueType font found (Pillow's built-in font if none), framed like MNIST; and
    the number of fonts."""
    fonts = sorted(p for directory in FONT_DIRECTORIES if directory.is_dir() for p in directory.rglob("*.ttf"))
    faces = [ImageFont.truetype(str(path), 80) for path in fonts] or [ImageFont.load_default(size=80)]
    images = [_framed(face, str(digit)) for face in faces for digit in range(10)]
    return np.stack([image for image in images if image is not None]), len(faces)


def _framed(face, text: str) -> np.ndarray | None:
    canvas = Image.new("L", (120, 120))
    ImageDraw.Draw(canvas).text((10, 10), text, fill=255, font=face)
    box = canvas.getbbox()
    if box is None:  # a font without the digit
        return None
    glyph = canvas.crop(box)
    scale = 20 / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.Resampling.LANCZOS)
    pixels = np.asarray(glyph, np.float32) / 255
    image = np.zeros((28, 28), np.float32)
    row, column = ndimage.center_of_mass(pixels)
    top = int(np.clip(round(14 - row), 0, 28 - pixels.shape[0]))
    left = int(np.clip(round(14 - column), 0, 28 - pixels.shape[1]))
    image[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return image


def out_of_distribution_sets(test: np.ndarray) -> dict[str, np.ndarray]:
    """Each set of grey images (n, 28, 28) in [0, 1]; `test` the MNIST test images."""
    rng = np.random.default_rng(0)
    subset = test[:SET_SIZE]
    return {
        "uniform noise": rng.random((SET_SIZE, 28, 28), dtype=np.float32),
        "constant": np.broadcast_to(rng.random((SET_SIZE, 1, 1), dtype=np.float32), (SET_SIZE, 28, 28)).copy(),
        "inverted MNIST": 1 - subset,
        "MNIST rotated 90 degrees": np.rot90(subset, 1, axes=(1, 2)).copy(),
        "UCI digits, enlarged": np.concatenate([load_uci_digits().train.images, load_uci_digits().test.images]),
        "printed digits": glyphs()[0],
    }


def png_bits(binary: np.ndarray) -> np.ndarray:
    """Size in bits of each 0/1 image as a 1-bit PNG (Pillow, maximum compression)."""
    sizes = []
    for image in binary.reshape(len(binary), 28, 28):
        buffer = io.BytesIO()
        Image.fromarray(image.astype(bool)).save(buffer, format="PNG", optimize=True)
        sizes.append(8 * len(buffer.getvalue()))
    return np.asarray(sizes, np.float64)


def scores(session: onnxruntime.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every score of grey `images` (n, 28, 28): higher is more out of distribution."""
    binary = binarise(images[:, None])
    log_likelihood = np.concatenate([
        session.run([LOG_LIKELIHOOD], {IMAGE: binary[i : i + BATCH]})[0][:, 0] for i in range(0, len(binary), BATCH)
    ])
    return {
        "nll": -log_likelihood / NATS_PER_BIT,
        "served": ood_scores(log_likelihood, complexity_bits(binary)),
        "png": ood_scores(log_likelihood, png_bits(binary)),
    }


def main(repository_root: Path) -> None:
    entries = repository.read_repository(repository_root)
    entry = next(e for e in entries.values() if e.model == Settings().default_density_model and e.capability == DENSITY)
    version = entry.versions[0]
    card = entry.cards[version]
    session = onnxruntime.InferenceSession(str(entry.version_path(version) / repository.ONNX_FILE), providers=["CPUExecutionProvider"])
    test = load_mnist().test.images
    inside = scores(session, test)
    threshold = card["metrics"]["ood_threshold"]
    print(f"{entry.model} v{version}: test NLL {card['metrics']['test_nll_nats']:.2f} nats "
          f"({card['metrics']['test_bits_per_dim']:.4f} bits/dim) on a sampled binarisation; "
          f"{np.mean(inside['nll']) * NATS_PER_BIT:.2f} nats on the test images binarised at 0.5")
    print(f"threshold {threshold:.1f} bits: {np.mean(inside['served'] > threshold):.2%} of the MNIST test images flagged\n")
    print("| set | images | AUROC, raw likelihood | AUROC, served score (context-model complexity) | AUROC, PNG complexity | flagged at the threshold |")
    print("|---|---|---|---|---|---|")
    for name, images in out_of_distribution_sets(test).items():
        outside = scores(session, images)
        labels = np.r_[np.zeros(len(test)), np.ones(len(images))]
        auroc = {key: roc_auc_score(labels, np.r_[inside[key], outside[key]]) for key in inside}
        print(f"| {name} | {len(images)} | {auroc['nll']:.4f} | {auroc['served']:.4f} | {auroc['png']:.4f} | "
              f"{np.mean(outside['served'] > threshold):.2%} |", flush=True)
