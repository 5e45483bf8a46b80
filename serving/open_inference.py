"""The Open Inference Protocol (KServe v2 gRPC, `inference.GRPCInferenceService`) beside latentserve.v1, on
the same port: every served graph as a model named like its repository entry (`autoencoder_encoder`),
so tritonclient, perf_analyzer and the KServe SDK work against the gateway unchanged.

Calls go through the same interceptor (tokens, scopes, quotas, metrics), the same bounded queue and the
same runtime as the gateway's own API. ModelInfer runs the graph as it is, as Triton would: tensors in
the model's own dtypes and shapes, no image decoding. Inputs come as `raw_input_contents` (what
tritonclient sends) or typed `contents`; outputs go back raw. Repository control, shared memory,
statistics, tracing and log settings are Triton's own: they answer UNIMPLEMENTED.
"""
import importlib.metadata
import math

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from latentserve.contract import LABEL
from latentserve.repository import CONFIG_FILE, Entry, read_config
from serving import validation
from serving.capability import Capability
from serving.errors import InvalidArgument, NotFound, ServingError, Unavailable

DATATYPES = {"float32": "FP32", "uint8": "UINT8", "int64": "INT64"}  # numpy dtype name -> the protocol's
CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents", "INT64": "int64_contents"}  # typed contents field
IMPLEMENTED = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelConfig"}


class Unimplemented(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class OpenInference(Capability):
    def servicer(self):
        return OpenInferenceServicer(self)

    def ready(self) -> bool:
        return self.inference.loaded

    def entry(self, name: str, version_text: str) -> tuple[Entry, int]:
        """The entry named `name` and the loaded version `version_text` names ("": the newest)."""
        entry = self.inference.entries().get(name)
        if entry is None:
            raise NotFound(f"no model named {validation.quoted(name)}", "model_name")
        if not entry.versions:
            raise Unavailable(f"model {name!r} has no version ready to serve")
        if not version_text:
            return entry, entry.versions[0]
        if not version_text.isascii() or not version_text.isdigit():
            raise InvalidArgument("a version number, or empty for the newest", "model_version")
        version = int(version_text)
        if version not in entry.versions:
            raise NotFound(f"version {version} of {name!r} is not loaded; loaded: {list(entry.versions)}", "model_version")
        return entry, version

    def inputs(self, request: service_pb2.ModelInferRequest, entry: Entry) -> dict[str, np.ndarray]:
        """The request's tensors, checked against the entry's inputs: names, datatypes, shapes, sizes."""
        specs = {spec.name: spec for spec in entry.inputs}
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise InvalidArgument(f"{len(raw)} raw tensors for {len(request.inputs)} inputs", "raw_input_contents")
        arrays, batch = {}, None
        for i, tensor in enumerate(request.inputs):
            field = f"inputs[{i}]"
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidArgument(f"{entry.name} has no input {validation.quoted(tensor.name)}; its inputs: {sorted(specs)}", f"{field}.name")
            if tensor.name in arrays:
                raise InvalidArgument(f"input {tensor.name!r} given twice", f"{field}.name")
            datatype = DATATYPES[spec.dtype]
            if tensor.datatype != datatype:
                raise InvalidArgument(f"{validation.quoted(tensor.datatype)}; {tensor.name!r} is {datatype}", f"{field}.datatype")
            shape = tuple(tensor.shape)
            if len(shape) != 1 + len(spec.dims) or shape[1:] != spec.dims or shape[0] < 1:
                raise InvalidArgument(f"shape {list(shape)[:8]}; {tensor.name!r} takes [N, {', '.join(map(str, spec.dims))}], N at least 1", f"{field}.shape")
            validation.count(shape[0], self.settings.max_batch_images, f"{field}.shape", "images")
            if batch is not None and shape[0] != batch:
                raise InvalidArgument(f"batch {shape[0]}; the other inputs have {batch}", f"{field}.shape")
            batch = shape[0]
            arrays[tensor.name] = _array(raw[i] if raw else None, tensor, spec.dtype, shape, f"raw_input_contents[{i}]" if raw else f"{field}.contents")
        missing = sorted(set(specs) - set(arrays))
        if missing:
            raise InvalidArgument(f"missing {missing}", "inputs")
        if entry.classes and LABEL in arrays and not ((arrays[LABEL] >= 0) & (arrays[LABEL] < entry.classes)).all():
            raise InvalidArgument(f"labels must lie in 0..{entry.classes - 1}", "inputs")
        return arrays


def _array(raw: bytes | None, tensor, dtype: str, shape: tuple[int, ...], field: str) -> np.ndarray:
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise InvalidArgument(f"{len(raw)} bytes; shape {list(shape)} of {tensor.datatype} needs {count * np.dtype(dtype).itemsize}", field)
        return np.frombuffer(raw, dtype).reshape(shape)
    values = getattr(tensor.contents, CONTENTS[tensor.datatype])
    if len(values) != count:
        raise InvalidArgument(f"{len(values)} values; shape {list(shape)} needs {count}", f"{field}.{CONTENTS[tensor.datatype]}")
    if dtype == "uint8" and any(value > 255 for value in values):
        raise InvalidArgument("UINT8 values lie in 0..255", f"{field}.{CONTENTS[tensor.datatype]}")
    return np.asarray(values, dtype).reshape(shape)


def _tensor_metadata(specs) -> list:
    return [service_pb2.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=DATATYPES[spec.dtype], shape=[-1, *spec.dims]) for spec in specs]


class OpenInferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, capability: OpenInference):
        self.capability = capability

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        inference = self.capability.inference
        return service_pb2.ServerReadyResponse(ready=inference.loaded and all(e.versions for e in inference.entries().values()))

    async def ModelReady(self, request, context):
        try:
            self.capability.entry(request.name, request.version)
        except (NotFound, Unavailable):
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="latentserve", version=importlib.metadata.version("latentserve"), extensions=[])

    async def ModelMetadata(self, request, context):
        entry, _ = self.capability.entry(request.name, request.version)
        return service_pb2.ModelMetadataResponse(
            name=entry.name, versions=[str(version) for version in entry.versions], platform="onnxruntime_onnx",
            inputs=_tensor_metadata(entry.inputs), outputs=_tensor_metadata(entry.outputs),
        )

    async def ModelConfig(self, request, context):
        entry, _ = self.capability.entry(request.name, request.version)
        return service_pb2.ModelConfigResponse(config=read_config(entry.path / CONFIG_FILE))

    async def ModelInfer(self, request, context):
        capability = self.capability
        entry, version = capability.entry(request.model_name, request.model_version)
        names = [output.name for output in entry.outputs]
        wanted = [output.name for output in request.outputs] or names
        for i, name in enumerate(wanted):
            if name not in names:
                raise InvalidArgument(f"{entry.name} has no output {validation.quoted(name)}; its outputs: {names}", f"outputs[{i}].name")
        inputs = capability.inputs(request, entry)
        outputs = await capability.inference.run(entry, version, inputs, context.time_remaining())
        response = service_pb2.ModelInferResponse(model_name=entry.name, model_version=str(version), id=request.id)
        for name in wanted:
            array = np.ascontiguousarray(outputs[name])
            tensor = response.outputs.add()
            tensor.name, tensor.datatype = name, DATATYPES[array.dtype.name]
            tensor.shape.extend(array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


def _unimplemented(name: str):
    async def method(self, request_or_iterator, context):
        raise Unimplemented(f"{name} is Triton's own; the gateway serves {sorted(IMPLEMENTED)}")

    return method


for _method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in IMPLEMENTED:
        setattr(OpenInferenceServicer, _method.name, _unimplemented(_method.name))
