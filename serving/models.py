"""The model listing: every served model, its graphs, tensors, loaded versions and model cards, and the
version directories that are not served with the reason why."""
import json

from latentserve.v1 import models_pb2, models_pb2_grpc
from serving.capability import Capability
from serving.convert import API_DTYPES
from serving.errors import NotFound
from serving.validation import quoted


class Models(Capability):
    def servicer(self):
        return ModelsServicer(self)

    def ready(self) -> bool:
        return self.inference.loaded

    def infos(self) -> dict[str, models_pb2.ModelInfo]:
        models: dict[str, models_pb2.ModelInfo] = {}
        for entry in self.inference.entries().values():
            info = models.setdefault(entry.model, models_pb2.ModelInfo(name=entry.model))
            graph = info.graphs.add(name=entry.graph, capability=entry.capability, repository_name=entry.name)
            for tensors, target in ((entry.inputs, graph.inputs), (entry.outputs, graph.outputs)):
                target.extend(models_pb2.TensorInfo(name=t.name, dtype=API_DTYPES.get(t.dtype, 0), dims=t.dims) for t in tensors)
            for version in entry.versions:
                card = entry.cards[version]
                metrics = {k: float(v) for k, v in card.get("metrics", {}).items() if isinstance(v, (int, float))}
                graph.versions.add(version=version, metrics=metrics, card_json=json.dumps(card))
            for directory, reason in sorted(entry.skipped.items()):
                graph.skipped_versions.add(directory=directory, reason=reason)
        return models


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, models: Models):
        self.models = models

    async def ListModels(self, request, context):
        return models_pb2.ListModelsResponse(models=sorted(self.models.infos().values(), key=lambda m: m.name))

    async def GetModel(self, request, context):
        models = self.models.infos()
        if request.name not in models:
            raise NotFound(f"no model named {quoted(request.name)}", "name")
        return models[request.name]
