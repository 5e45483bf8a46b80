"""The generate capability: images from latents drawn by (seed, index) (latentserve/latents.py), with
truncation, explicit latents, interpolation and streams.

Two kinds of model sample by a loop of graph runs here, each sample still a pure function of (version,
seed, index):
- a density model with no generator graph (PixelCNN), pixel by pixel in raster order: its density graph
  runs once per pixel on the image so far, pixel i set where its uniform draw falls below
  p(x_i = 1 | x_<i). The uniform draws are the standard normal latent through the normal CDF, so
  truncation keeps the likely pixels always on and the unlikely ones always off.
- an RBM (a generator graph taking hidden uniforms), by a Gibbs chain of `gibbs_steps` steps from the
  image whose pixels are on where the latent is negative: each step the graph draws the hidden states
  and returns the next image's pixel probabilities, from which the pixels are drawn here. Step t's
  uniforms are draws 2t (hidden) and 2t + 1 (pixels) of (seed, index); the answer is the last step's
  probabilities. Explicit latents set the start; the chain's draws still come from the seed.
"""
import asyncio
import math
import time
from dataclasses import dataclass
from enum import Enum

import numpy as np
from prometheus_client import Counter
from scipy.special import expit, ndtr

from latentserve.contract import (
    DENSITY, GENERATE, HIDDEN_UNIFORMS, IMAGE, IMAGE_SPEC, LABEL, LATENT, NEXT_PROBABILITIES, PIXEL_LOGITS, PIXELS,
)
from latentserve.latents import sample_latents, sample_uniforms
from latentserve.repository import Entry
from latentserve.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from serving import convert, validation
from serving.capability import Capability
from serving.errors import InvalidArgument, ResourceExhausted

TRUNCATION_RANGE = (0.05, 4.0)  # below: mostly redraws; above: the same as no truncation
INDEX_LIMIT = 2**63  # sample indices are int64
GENERATED = Counter("latentserve_generated_images_total", "images generated", ["model"])


class Sampler(Enum):
    GRAPH = "graph"  # one run of a generator graph maps latents to images
    PIXELS = "pixels"  # a density graph, run once per pixel
    GIBBS = "gibbs"  # an RBM's Gibbs chain, one run per step


@dataclass(frozen=True)
class Generator:
    """A generator graph, resolved to the version that will run."""

    entry: Entry
    version: int
    latent_dim: int
    classes: int  # 0: unconditional
    sampler: Sampler = Sampler.GRAPH


@dataclass(frozen=True)
class Generated:
    generator: Generator
    images: np.ndarray  # (n, 1, 28, 28) float32 in [0, 1]
    latents: np.ndarray  # (n, latent_dim) float32
    labels: np.ndarray | None  # (n,) int64, conditional models only


class Generation(Capability):
    def servicer(self):
        return GeneratorServicer(self)

    def ready(self) -> bool:
        return self.inference.ready(self.settings.default_generator, GENERATE)

    def generator(self, model: str, version: int) -> Generator:
        if self._samples_pixels(model):
            entry, version = self.inference.resolve(model, DENSITY, version)
            return Generator(entry, version, PIXELS, 0, Sampler.PIXELS)
        entry, version = self.inference.resolve(model, GENERATE, version)
        if any(tensor.name == HIDDEN_UNIFORMS for tensor in entry.inputs):
            return Generator(entry, version, PIXELS, 0, Sampler.GIBBS)
        conditional = any(tensor.name == LABEL for tensor in entry.inputs)
        return Generator(entry, version, entry.latent_dim, entry.classes if conditional else 0)

    def _samples_pixels(self, model: str) -> bool:
        """Whether `model` has a density graph with per-pixel logits and no generator graph."""
        graphs = [e for e in self.inference.entries().values() if e.model == model]
        return not any(e.capability == GENERATE for e in graphs) and any(
            e.capability == DENSITY and any(t.name == PIXEL_LOGITS for t in e.outputs) for e in graphs
        )

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

    async def run(
        self, generator: Generator, latents: np.ndarray, labels: np.ndarray | None, seed: int, start: int, timeout: float | None = None
    ) -> Generated:
        """Images of samples start..start+len(latents)-1 of `seed` (the seed and indices matter to a Gibbs
        chain's draws only)."""
        if generator.sampler is Sampler.GRAPH:
            inputs = {LATENT: latents}
            if generator.classes:
                inputs[LABEL] = labels[:, None]
            outputs = await self.inference.run(generator.entry, generator.version, inputs, timeout)
            images = np.clip(outputs[IMAGE], 0, 1)  # a tanh or sigmoid can round past the ends
        else:
            limit = self.settings.max_sequential_sampling_images
            if len(latents) > limit:
                raise ResourceExhausted(
                    f"{len(latents)} images; {generator.entry.model!r} samples by a loop of graph runs, at most {limit} a call", "count"
                )
            deadline = math.inf if timeout is None else time.monotonic() + timeout
            if generator.sampler is Sampler.PIXELS:
                images = await self._sample_pixels(generator, latents, deadline)
            else:
                images = await self._run_gibbs_chain(generator, latents, seed, start, deadline)
        GENERATED.labels(generator.entry.model).inc(len(latents))
        return Generated(generator, images, latents, labels)

    async def _run_graph(self, generator: Generator, inputs: dict[str, np.ndarray], output: str, deadline: float) -> np.ndarray:
        remaining = None if deadline == math.inf else deadline - time.monotonic()
        return (await self.inference.run(generator.entry, generator.version, inputs, remaining))[output]

    async def _sample_pixels(self, generator: Generator, latents: np.ndarray, deadline: float) -> np.ndarray:
        uniforms = ndtr(latents).reshape(-1, *IMAGE_SPEC.dims)
        images = np.zeros(uniforms.shape, np.float32)
        _, height, width = IMAGE_SPEC.dims
        for row in range(height):
            for column in range(width):
                logits = await self._run_graph(generator, {IMAGE: images}, PIXEL_LOGITS, deadline)
                images[:, 0, row, column] = uniforms[:, 0, row, column] < expit(logits[:, 0, row, column])
        return images

    async def _run_gibbs_chain(self, generator: Generator, latents: np.ndarray, seed: int, start: int, deadline: float) -> np.ndarray:
        hidden = next(tensor.dims[0] for tensor in generator.entry.inputs if tensor.name == HIDDEN_UNIFORMS)
        count = len(latents)
        images = (latents < 0).astype(np.float32).reshape(-1, *IMAGE_SPEC.dims)
        for step in range(self.settings.gibbs_steps):
            if step:  # the pixels drawn from the last step's probabilities
                images = (sample_uniforms(seed, start, count, PIXELS, 2 * step - 1).reshape(images.shape) < probabilities).astype(np.float32)
            feeds = {IMAGE: images, HIDDEN_UNIFORMS: sample_uniforms(seed, start, count, hidden, 2 * step)}
            probabilities = await self._run_graph(generator, feeds, NEXT_PROBABILITIES, deadline)
        return probabilities


def check_indices(start: int, count: int, field: str) -> None:
    """`start`, the first of `count` sample indices: 0 or more, with the last below 2**63."""
    if not 0 <= start <= INDEX_LIMIT - count:
        raise InvalidArgument(f"{start}; want 0 to {INDEX_LIMIT - count} (the last index must stay below 2**63)", field)


def check_truncation(generator: Generator, truncation: float | None, field: str) -> float | None:
    if truncation is None:
        return None
    if generator.sampler is Sampler.GIBBS:
        raise InvalidArgument(f"{generator.entry.model!r} samples by a Gibbs chain, which only the latent's signs start: leave it unset", field)
    if not TRUNCATION_RANGE[0] <= truncation <= TRUNCATION_RANGE[1]:
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


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, generation: Generation):
        self.generation = generation
        self.settings = generation.settings

    def _resolve(self, model: common_pb2.ModelRef) -> Generator:
        return self.generation.generator(model.name or self.settings.default_generator, model.version)

    def _response(self, generated: Generated, png: bool) -> generator_pb2.GenerateResponse:
        return generator_pb2.GenerateResponse(
            model=common_pb2.ModelRef(name=generated.generator.entry.model, version=generated.generator.version),
            latents=convert.tensor(generated.latents, common_pb2.DATA_TYPE_FLOAT32),
            labels=[] if generated.labels is None else generated.labels.tolist(),
            **convert.image_fields(generated.images, png),
        )

    async def Generate(self, request, context):
        generation, settings = self.generation, self.settings
        generator, png = self._resolve(request.model), convert.wants_png(request.format)
        sampling = request.sampling
        truncation = check_truncation(generator, sampling.truncation if sampling.HasField("truncation") else None, "sampling.truncation")
        if request.HasField("latents"):
            if request.count:
                raise InvalidArgument("leave 0 when `latents` is set", "count")
            latents = generation.latents(generator, convert.float_tensor(request.latents, "latents"), "latents")
            validation.count(len(latents), settings.max_batch_images, "latents", "images")
            check_indices(sampling.start_index, len(latents), "sampling.start_index")  # the labels' indices
        else:
            count = validation.count(request.count, settings.max_batch_images, "count", "images")
            check_indices(sampling.start_index, count, "sampling.start_index")
            latents = await asyncio.to_thread(sample_latents, sampling.seed, sampling.start_index, count, generator.latent_dim, truncation)
        labels = generation.labels(generator, list(sampling.labels), sampling.start_index, len(latents), "sampling.labels")
        generated = await generation.run(generator, latents, labels, sampling.seed, sampling.start_index, context.time_remaining())
        return await asyncio.to_thread(self._response, generated, png)  # PNG encoding off the event loop

    async def Interpolate(self, request, context):
        generation = self.generation
        generator, png = self._resolve(request.model), convert.wants_png(request.format)
        if generator.sampler is not Sampler.GRAPH:
            raise InvalidArgument(f"{generator.entry.model!r} samples by a loop of graph runs: it has no latent space to interpolate in", "model.name")
        if request.steps < 2:
            raise InvalidArgument("must be at least 2 (the endpoints)", "steps")
        steps = validation.count(request.steps, self.settings.max_batch_images, "steps", "images")
        truncation = check_truncation(generator, request.truncation if request.HasField("truncation") else None, "truncation")
        kind = request.WhichOneof("endpoints")
        if kind == "seeds":
            ends = [sample_latents(seed, 0, 1, generator.latent_dim, truncation)[0] for seed in (request.seeds.start, request.seeds.end)]
        elif kind == "latents":
            ends = generation.latents(generator, convert.float_tensor(request.latents, "latents"), "latents")
            if len(ends) != 2:
                raise InvalidArgument(f"{len(ends)} latents; want 2 (start and end)", "latents.shape")
        else:
            raise InvalidArgument("set `seeds` or `latents`", "endpoints")
        spherical = request.method == generator_pb2.INTERPOLATION_SPHERICAL
        latents = interpolate(ends[0], ends[1], steps, spherical)
        label = [request.label] if request.HasField("label") else [0] if generator.classes else []
        labels = generation.labels(generator, label, 0, steps, "label")
        generated = await generation.run(generator, latents, labels, 0, 0, context.time_remaining())
        return await asyncio.to_thread(self._response, generated, png)

    async def GenerateStream(self, request, context):
        generation, settings = self.generation, self.settings
        generator, png = self._resolve(request.model), convert.wants_png(request.format)
        count = validation.count(request.count, settings.max_stream_images, "count", "images")
        sampling = request.sampling
        check_indices(sampling.start_index, count, "sampling.start_index")
        if len(sampling.labels) > 1:
            raise InvalidArgument("give at most one label for a stream", "sampling.labels")
        truncation = check_truncation(generator, sampling.truncation if sampling.HasField("truncation") else None, "sampling.truncation")
        chunk = min(validation.optional_count(
            request.chunk_size, settings.default_chunk_images, settings.max_batch_images, "chunk_size", "images"
        ), count)
        if generator.sampler is not Sampler.GRAPH:
            chunk = min(chunk, settings.max_sequential_sampling_images)
        first, stop = sampling.start_index, sampling.start_index + count
        generation.labels(generator, list(sampling.labels), first, 0, "sampling.labels")  # check them before any work

        def message(start: int, generated: Generated) -> generator_pb2.GenerateChunk:
            return generator_pb2.GenerateChunk(
                model=common_pb2.ModelRef(name=generator.entry.model, version=generator.version),
                start_index=start,
                labels=[] if generated.labels is None else generated.labels.tolist(),
                **convert.image_fields(generated.images, png),
            )

        async def produce(start: int) -> generator_pb2.GenerateChunk:
            size = min(chunk, stop - start)
            latents = await asyncio.to_thread(sample_latents, sampling.seed, start, size, generator.latent_dim, truncation)
            labels = generation.labels(generator, list(sampling.labels), start, size, "sampling.labels")
            generated = await generation.run(generator, latents, labels, sampling.seed, start, context.time_remaining())
            return await asyncio.to_thread(message, start, generated)

        # The next chunk is computed while the current one is sent; a cancelled call cancels it.
        pending = asyncio.ensure_future(produce(first))
        try:
            for start in range(first, stop, chunk):
                ready = await pending
                if start + chunk < stop:
                    pending = asyncio.ensure_future(produce(start + chunk))
                yield ready
        finally:
            pending.cancel()
