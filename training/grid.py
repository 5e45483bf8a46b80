"""Image grids as PNG, for the progress picture a training run rewrites each epoch."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """`images` (n, 1, h, w) in [0, 1], laid out `columns` to a row with a 2-pixel gap."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * (h + 2) + 2, columns * (w + 2) + 2), dtype=np.uint8)
    pixels = (images.clamp(0, 1)[:, 0].cpu().numpy() * 255).round().astype(np.uint8)
    for i, image in enumerate(pixels):
        top, left = 2 + (i // columns) * (h + 2), 2 + (i % columns) * (w + 2)
        canvas[top : top + h, left : left + w] = image
    Image.fromarray(canvas).save(path)
