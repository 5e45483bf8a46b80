"""Contact sheets of images, for previews, README grids and batch jobs."""
from pathlib import Path

import numpy as np
from PIL import Image as PILImage


def save_grid(images: np.ndarray, path: Path, columns: int) -> None:
    """A contact sheet: `images` (n, 1, h, w) in [0, 1], `columns` to a row with a 2-pixel gap, as PNG."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * (h + 2) + 2, columns * (w + 2) + 2), dtype=np.uint8)
    pixels = (np.clip(images[:, 0], 0, 1) * 255).round().astype(np.uint8)
    for i, image in enumerate(pixels):
        top, left = 2 + (i // columns) * (h + 2), 2 + (i % columns) * (w + 2)
        canvas[top : top + h, left : left + w] = image
    PILImage.fromarray(canvas).save(path)
