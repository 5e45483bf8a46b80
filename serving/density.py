"""The density capability: images -> exact log-likelihoods under an explicit density model, and the
out-of-distribution score (latentserve/density.py) with its flag, which Classify and Translate also
return when asked."""
import asyncio
from dataclasses import dataclass

import numpy as np

from latentserve.contract import DENSITY, IMAGE, LOG_LIKELIHOOD
from latentserve.density import binarise, bits_per_dim, complexity_bits, ood_scores
from latentserve.v1 import common_pb2, density_pb2, density_pb2_grpc
from serving.capability import Capability, decode_images
from serving.errors import Unavailable

THRESHOLD_METRIC = "ood_threshold"  # the model card's metric: the flag's threshold, in bits


@dataclass(frozen=True)
class Scored:
    model: str
    version: int
    log_likelihoods: np.ndarray  # float32 (n,), nats
    scores: np.ndarray  # float32 (n,), bits
    threshold: float

    @property
    def bits_per_dim(self) -> np.ndarray:
        return bits_per_dim(self.log_likelihoods)

    @property
    def flags(self) -> np.ndarray:
        return self.scores > self.threshold

    def distribution(self) -> density_pb2.Distribution:
        return density_pb2.Distribution(
            scores=self.scores.tolist(),
            out_of_distribution=self.flags.tolist(),
            threshold=self.threshold,
            model=common_pb2.ModelRef(name=self.model, version=self.version),
        )


class DensityScoring(Capability):
    def servicer(self):
        return DensityServicer(self)

    def ready(self) -> bool:
        return self.inference.ready(self.settings.default_density_model, DENSITY)

    async def score(self, model: str, version: int, images: np.ndarray, timeout: float | None = None, field: str = "model") -> Scored:
        """`images` (n, 1, 28, 28) float32 in [0, 1], binarised here; `version` 0 runs the newest loaded version."""
        entry, version = self.inference.resolve(model, DENSITY, version, field=field)
        threshold = entry.cards[version].get("metrics", {}).get(THRESHOLD_METRIC)
        if threshold is None:
            raise Unavailable(f"version {version} of {model!r} has no {THRESHOLD_METRIC} in its card; export it again")
        binary = binarise(images)
        # the compressor's code lengths on a worker thread while the model runs
        complexity = asyncio.ensure_future(asyncio.to_thread(complexity_bits, binary))
        try:
            outputs = await self.inference.run(entry, version, {IMAGE: binary}, timeout)
        finally:
            bits = await complexity
        log_likelihoods = outputs[LOG_LIKELIHOOD][:, 0]
        return Scored(model, version, log_likelihoods, ood_scores(log_likelihoods, bits), float(threshold))

    async def check(self, images: np.ndarray, timeout: float | None) -> Scored:
        """The default density model's verdict on `images` (Classify's and Translate's `check_distribution`)."""
        return await self.score(self.settings.default_density_model, 0, images, timeout, field="check_distribution")


class DensityServicer(density_pb2_grpc.DensityServicer):
    def __init__(self, density: DensityScoring):
        self.density = density

    async def Score(self, request, context):
        settings = self.density.settings
        images = await decode_images(request.images, "images", settings)
        scored = await self.density.score(
            request.model.name or settings.default_density_model, request.model.version, images, context.time_remaining()
        )
        return density_pb2.ScoreResponse(
            model=common_pb2.ModelRef(name=scored.model, version=scored.version),
            log_likelihoods=scored.log_likelihoods.tolist(),
            bits_per_dim=scored.bits_per_dim.tolist(),
            distribution=scored.distribution(),
        )
