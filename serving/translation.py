"""The translate capability: images of one domain -> images of another, along a named direction.

A direction is the name of a translate graph ("edges2digit", "mnist2uci"); one model may offer several
directions and several models may offer one.
"""
import asyncio
from dataclasses import dataclass

import numpy as np

from latentserve.contract import IMAGE, TRANSLATE, TRANSLATED
from latentserve.repository import Entry
from latentserve.v1 import common_pb2, translator_pb2, translator_pb2_grpc
from serving import convert
from serving.capability import Capability, Inference, decode_images
from serving.density import DensityScoring
from serving.errors import InvalidArgument, NotFound
from serving.settings import Settings
from serving.validation import quoted


@dataclass(frozen=True)
class Translated:
    model: str
    version: int
    direction: str
    images: np.ndarray  # float32 (n, 1, 28, 28) in [0, 1]


class Translation(Capability):
    def __init__(self, settings: Settings, inference: Inference, density: DensityScoring):
        super().__init__(settings, inference)
        self.density = density

    def servicer(self):
        return TranslatorServicer(self)

    def ready(self) -> bool:
        """Translators have no default model: serving while any direction is."""
        return self.inference.loaded and any(e.capability == TRANSLATE and e.versions for e in self.inference.entries().values())

    def directions(self) -> dict[str, list[Entry]]:
        """Direction -> the translate entries offering it, in repository order."""
        directions: dict[str, list[Entry]] = {}
        for entry in self.inference.entries().values():
            if entry.capability == TRANSLATE:
                directions.setdefault(entry.graph, []).append(entry)
        return directions

    async def translate(self, direction: str, model: str, version: int, images: np.ndarray, timeout: float | None = None) -> Translated:
        """`images` (n, 1, 28, 28) float32 in [0, 1]; `model` "" is the one model offering `direction`;
        `version` 0 runs the newest loaded version."""
        if not direction:
            raise InvalidArgument("name a direction (ListDirections lists them)", "direction")
        directions = self.directions()
        if direction not in directions:
            raise NotFound(f"no direction {quoted(direction)}; served: {sorted(directions)}", "direction")
        if not model:
            offering = [entry.model for entry in directions[direction]]
            if len(offering) > 1:
                raise InvalidArgument(f"models {sorted(offering)} translate {direction!r}; name one", "model.name")
            model = offering[0]
        entry, version = self.inference.resolve(model, TRANSLATE, version, graph=direction)
        outputs = await self.inference.run(entry, version, {IMAGE: images}, timeout)
        return Translated(model, version, direction, outputs[TRANSLATED])


class TranslatorServicer(translator_pb2_grpc.TranslatorServicer):
    def __init__(self, translation: Translation):
        self.translation = translation

    async def Translate(self, request, context):
        settings = self.translation.settings
        png = convert.wants_png(request.format)
        if request.resize not in (translator_pb2.RESIZE_UNSPECIFIED, translator_pb2.RESIZE_AREA, translator_pb2.RESIZE_NONE):
            raise InvalidArgument(f"unknown resize mode {request.resize}", "resize")
        images = await decode_images(request.images, "images", settings, resize=request.resize != translator_pb2.RESIZE_NONE)
        timeout = context.time_remaining()
        translate = self.translation.translate(request.direction, request.model.name, request.model.version, images, timeout)
        if request.check_distribution:
            translated, scored = await asyncio.gather(translate, self.translation.density.check(images, timeout))
        else:
            translated, scored = await translate, None

        def response() -> translator_pb2.TranslateResponse:
            return translator_pb2.TranslateResponse(
                model=common_pb2.ModelRef(name=translated.model, version=translated.version),
                direction=translated.direction,
                distribution=scored.distribution() if scored else None,
                **convert.image_fields(translated.images, png),
            )

        return await asyncio.to_thread(response)  # PNG encoding off the event loop

    async def ListDirections(self, request, context):
        directions = []
        for name, entries in sorted(self.translation.directions().items()):
            for entry in sorted(entries, key=lambda e: e.model):
                (image_input,), (image_output,) = entry.inputs, entry.outputs
                directions.append(translator_pb2.Direction(
                    name=name, model=entry.model, versions=entry.versions, input_dims=image_input.dims, output_dims=image_output.dims
                ))
        return translator_pb2.ListDirectionsResponse(directions=directions)
