"""The generate capability: latents from (seed, index), truncation, interpolation, and the generator graphs."""
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter

from serving.errors import InvalidArgument
from latentserve.repository import Entry
from serving.runtime import InflightLimit, Runtime, resolve

CAPABILITY = "generate"
LATENT_INPUT, LABEL_INPUT, IMAGE_OUTPUT = "latent", "label", "image"
TRUNCATION_RANGE = (0.05, 4.0)  # below: mostly redraws; above: the same as no truncation
GENERATED = Counter("latentserve_generated_images_total", "images generated", ["model"])


@dataclass(frozen=True)
class Generator:
    """A generator graph, resolved to the version that will run."""

    entry: Entry
    version: int
    latent_dim: int
    classes: int  # 0: unconditional


@dataclass(frozen=True)
class Generated:
    generator: Generator
    images: np.ndarray  # (n, 1, 28, 28) float32 in [0, 1]
    latents: np.ndarray  # (n, latent_dim) float32
    labels: np.ndarray | None  # (n,) int64, conditional models only


class Generation:
    def __init__(self, runtime: Runtime, inflight: InflightLimit):
        self.runtime = runtime
        self.inflight = inflight

    def generator(self, model: str, version: int) -> Generator:
        entry, version = resolve(self.runtime, model, CAPABILITY, version)
        conditional = any(tensor.name == LABEL_INPUT for tensor in entry.inputs)
        return Generator(entry, version, entry.latent_dim, entry.classes if conditional else 0)

    def labels(self, generator: Generator, labels: list[int], start: int, count: int, field: str) -> np.ndarray | None:
        """Labels of samples start..start+count-1: one for all, one each, or (none given) index mod classes."""
        if not generator.classes:
            if labels:
                raise InvalidArgument(f"model {generator.entry.model!r} is not class-conditional", field)
            return None
        for i, label in enumerate(labels):
            if not 0 <= label < generator.classes:
                raise InvalidArgument(f"class {label} unknown; the model has classes 0..{generator.classes - 1}", f"{field}[{i}]")
        if not labels:
            return np.arange(start, start + count, dtype=np.int64) % generator.classes
        if len(labels) == 1:
            return np.full(count, labels[0], np.int64)
        if len(labels) != count:
            raise InvalidArgument(f"{len(labels)} labels for {count} images; give one, or one per image", field)
        return np.asarray(labels, np.int64)

    def latents(self, generator: Generator, latents: np.ndarray, field: str) -> np.ndarray:
        """Check explicit latents: [n, latent_dim], finite."""
        if latents.ndim != 2 or latents.shape[1] != generator.latent_dim:
            raise InvalidArgument(f"shape {list(latents.shape)}; want [N, {generator.latent_dim}]", f"{field}.shape")
        if not np.isfinite(latents).all():
            raise InvalidArgument("holds NaN or infinity", f"{field}.data")
        return latents

    async def run(self, generator: Generator, latents: np.ndarray, labels: np.ndarray | None, timeout: float | None = None) -> Generated:
        inputs = {LATENT_INPUT: latents}
        if generator.classes:
            inputs[LABEL_INPUT] = labels[:, None]
        with self.inflight.admit(generator.entry):
            outputs = await self.runtime.infer(generator.entry, generator.version, inputs, timeout)
        GENERATED.labels(generator.entry.model).inc(len(latents))
        return Generated(generator, outputs[IMAGE_OUTPUT], latents, labels)


def check_truncation(truncation: float | None, field: str) -> float | None:
    if truncation is not None and not TRUNCATION_RANGE[0] <= truncation <= TRUNCATION_RANGE[1]:
        raise InvalidArgument(f"{truncation}; want {TRUNCATION_RANGE[0]} to {TRUNCATION_RANGE[1]}, or unset for none", field)
    return truncation


def interpolate(start: np.ndarray, end: np.ndarray, steps: int, spherical: bool) -> np.ndarray:
    """`steps` latents from `start` to `end`, endpoints included: straight, or along the great circle
    (slerp, Shoemake 1985) which keeps the norm of Gaussian latents instead of shrinking it midway."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a, b = start.astype(np.float64), end.astype(np.float64)
    cosine = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    if not spherical or np.sin(angle) < 1e-6:  # (anti)parallel: the great circle is not unique
        path = (1 - t) * a + t * b
    else:
        path = (np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)
    return path.astype(np.float32)
