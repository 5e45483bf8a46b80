"""The image augmentations training uses: `shift` (LeNet's, and FixMatch's weak view) and
`strong_augment` (FixMatch's strong view)."""
import math

import torch
from torch.nn import functional as F


def shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each image moved by its own random offset in [-max_shift, max_shift]^2, zero-filled."""
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def strong_augment(images: torch.Tensor, cutout: int) -> torch.Tensor:
    """A random affine per image (rotation up to 20 degrees, scale 0.85-1.15, shear up to 0.2, shift up
    to 3 pixels), then a `cutout` x `cutout` square of zeros at a random place (none if `cutout` is 0)."""
    n = len(images)
    if n == 0:
        return images
    angle = (torch.rand(n) * 2 - 1) * math.radians(20)
    scale = 0.85 + torch.rand(n) * 0.3
    shear = (torch.rand(n) * 2 - 1) * 0.2
    offset = (torch.rand(n, 2) * 2 - 1) * (3 / 14)  # grid units: 14 pixels per unit on 28 pixels
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear * cos, offset[:, 0]], 1),
        torch.stack([sin, cos + shear * sin, offset[:, 1]], 1),
    ], 1)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    warped = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    if not cutout:
        return warped
    rows = torch.arange(28)[None, :, None]
    cols = torch.arange(28)[None, None, :]
    top, left = (torch.randint(-cutout // 2, 28 - cutout // 2, (2, n, 1, 1)))
    square = (rows >= top) & (rows < top + cutout) & (cols >= left) & (cols < left + cutout)
    return warped * (~square)[:, None]
