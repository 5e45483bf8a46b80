"""The classify capability: images -> class probabilities, the predicted class and its confidence."""
import asyncio
from dataclasses import dataclass

import numpy as np

from latentserve.contract import CLASSIFY, IMAGE, PROBABILITIES
from latentserve.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2
from serving import convert
from serving.capability import Capability, Inference, decode_images
from serving.density import DensityScoring
from serving.settings import Settings


@dataclass(frozen=True)
class Classified:
    model: str
    version: int
    probabilities: np.ndarray  # float32 (n, classes)
    labels: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float32 (n,): the predicted class's probability
    entropies: np.ndarray  # float32 (n,), nats


def summarise(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, confidences, entropies) of rows of class probabilities."""
    labels = probabilities.argmax(1)
    confidences = probabilities[np.arange(len(labels)), labels]
    entropies = -(probabilities * np.log(np.clip(probabilities, 1e-30, None))).sum(1)
    return labels, confidences, entropies.astype(np.float32)


class Classification(Capability):
    def __init__(self, settings: Settings, inference: Inference, density: DensityScoring):
        super().__init__(settings, inference)
        self.density = density

    def servicer(self):
        return ClassifierServicer(self)

    def ready(self) -> bool:
        return self.inference.ready(self.settings.default_classifier, CLASSIFY)

    async def classify(self, model: str, version: int, images: np.ndarray, timeout: float | None = None) -> Classified:
        """`images` (n, 1, 28, 28) float32 in [0, 1]; `version` 0 runs the newest loaded version."""
        entry, version = self.inference.resolve(model, CLASSIFY, version)
        outputs = await self.inference.run(entry, version, {IMAGE: images}, timeout)
        probabilities = outputs[PROBABILITIES]
        return Classified(model, version, probabilities, *summarise(probabilities))


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, classification: Classification):
        self.classification = classification

    async def Classify(self, request, context):
        settings = self.classification.settings
        images = await decode_images(request.images, "images", settings)
        timeout = context.time_remaining()
        classify = self.classification.classify(request.model.name or settings.default_classifier, request.model.version, images, timeout)
        if request.check_distribution:
            classified, scored = await asyncio.gather(classify, self.classification.density.check(images, timeout))
        else:
            classified, scored = await classify, None
        return classifier_pb2.ClassifyResponse(
            model=common_pb2.ModelRef(name=classified.model, version=classified.version),
            probabilities=convert.tensor(classified.probabilities, common_pb2.DATA_TYPE_FLOAT32),
            labels=classified.labels.tolist(),
            confidences=classified.confidences.tolist(),
            entropies=classified.entropies.tolist(),
            distribution=scored.distribution() if scored else None,
        )
