"""The Open Inference Protocol (KServe v2 gRPC) on the gateway's port, called with tritonclient as users
would, and with its raw stub where a test reads the status details."""
import grpc
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as triton_client
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from latentserve import repository
from latentserve.v1 import encoder_pb2, encoder_pb2_grpc
from serving import tokens
from tests.conftest import MODEL_REPOSITORY, RunningGateway, assert_refused, tensor_batch


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none", max_batch_images=64).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(gateway):
    client = triton_client.InferenceServerClient(gateway.target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(gateway):
    with gateway.channel() as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton_client.InferInput:
    tensor = triton_client.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_server_and_model_metadata_describe_every_served_graph(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "latentserve"
    entries = repository.read_repository(MODEL_REPOSITORY)
    for name, entry in entries.items():
        assert client.is_model_ready(name) and client.is_model_ready(name, str(entry.versions[-1]))
        metadata = client.get_model_metadata(name)
        assert list(metadata.versions) == [str(version) for version in entry.versions]
        assert [(t.name, list(t.shape)) for t in metadata.inputs] == [(spec.name, [-1, *spec.dims]) for spec in entry.inputs]
        assert [t.name for t in metadata.outputs] == [spec.name for spec in entry.outputs]
        assert client.get_model_config(name).config.max_batch_size == entry.max_batch_size
    assert not client.is_model_ready("no_such_model") and not client.is_model_ready("autoencoder_encoder", "99")


def test_infer_gives_what_the_encoder_api_gives(gateway, client):
    images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    result = client.infer("autoencoder_encoder", [infer_input("image", images, "FP32")],
                          outputs=[triton_client.InferRequestedOutput("code")])
    with gateway.channel() as channel:
        encoded = encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(images=tensor_batch(images[:, 0])))
    assert result.get_response().model_version == str(encoded.model.version)
    assert [output.name for output in result.get_response().outputs] == ["code"]  # only what was asked for
    assert np.array_equal(result.as_numpy("code"), np.frombuffer(encoded.codes.data, "<f4").reshape(encoded.codes.shape))


def test_infer_runs_a_conditional_generator_as_onnxruntime_does(client):
    entry = repository.read_repository(MODEL_REPOSITORY)["acgan_generator"]
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((3, entry.latent_dim), dtype=np.float32)
    label = np.array([[0], [4], [9]], np.int64)
    result = client.infer("acgan_generator", [infer_input("latent", latent, "FP32"), infer_input("label", label, "INT64")], model_version="2")
    session = onnxruntime.InferenceSession(str(entry.version_path(2) / repository.ONNX_FILE), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"latent": latent, "label": label})
    assert np.allclose(result.as_numpy(entry.outputs[0].name), expected, atol=1e-6)


def raw_request(model: str, arrays: dict[str, tuple[np.ndarray, str]], **fields) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, **fields)
    for name, (array, datatype) in arrays.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


IMAGE = np.zeros((2, 1, 28, 28), np.float32)


@pytest.mark.parametrize("request_, code, field", [
    (raw_request("no_model", {"image": (IMAGE, "FP32")}), grpc.StatusCode.NOT_FOUND, "model_name"),
    (raw_request("autoencoder_encoder", {"image": (IMAGE, "FP32")}, model_version="v2"), grpc.StatusCode.INVALID_ARGUMENT, "model_version"),
    (raw_request("autoencoder_encoder", {"image": (IMAGE, "FP32")}, model_version="7"), grpc.StatusCode.NOT_FOUND, "model_version"),
    (raw_request("autoencoder_encoder", {"pixels": (IMAGE, "FP32")}), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].name"),
    (raw_request("autoencoder_encoder", {"image": (IMAGE.astype(np.float64), "FP64")}), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].datatype"),
    (raw_request("autoencoder_encoder", {"image": (IMAGE[:, 0], "FP32")}), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    (raw_request("autoencoder_encoder", {"image": (np.zeros((65, 1, 28, 28), np.float32), "FP32")}), grpc.StatusCode.RESOURCE_EXHAUSTED, "inputs[0].shape"),
    (raw_request("autoencoder_encoder", {}), grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
    (raw_request("acgan_generator", {"latent": (np.zeros((1, 64), np.float32), "FP32"), "label": (np.array([[10]]), "INT64")}),
     grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
    (raw_request("autoencoder_encoder", {"image": (IMAGE, "FP32")}, outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="z")]),
     grpc.StatusCode.INVALID_ARGUMENT, "outputs[0].name"),
], ids=["model", "version text", "version not loaded", "input name", "datatype", "shape", "batch", "missing input", "label", "output"])
def test_bad_infer_requests_are_refused_naming_the_field(stub, request_, code, field):
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request_)
    assert_refused(raised.value, code, field)


def test_contents_in_typed_fields_and_raw_sizes_are_checked(stub, client):
    request = service_pb2.ModelInferRequest(model_name="autoencoder_encoder")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    tensor.contents.fp32_contents.extend([0.5] * 784)
    response = stub.ModelInfer(request)
    assert [output.name for output in response.outputs] == ["code", "binary_code"] and len(response.raw_output_contents) == 2
    tensor.contents.fp32_contents.pop()
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request)
    assert_refused(raised.value, grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].contents.fp32_contents")
    short = raw_request("autoencoder_encoder", {"image": (IMAGE, "FP32")})
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(short)
    assert_refused(raised.value, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0]")


def test_what_only_triton_serves_is_unimplemented(client, stub):
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
        client.load_model("autoencoder_encoder")
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.ModelStreamInfer(iter([raw_request("autoencoder_encoder", {"image": (IMAGE, "FP32")})])))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_infer_is_counted_in_the_gateways_metrics(client):
    def answered() -> float:
        return REGISTRY.get_sample_value("latentserve_requests_total", {"method": "/inference.GRPCInferenceService/ModelInfer", "code": "OK"}) or 0

    before = answered()
    client.infer("autoencoder_encoder", [infer_input("image", IMAGE, "FP32")])
    assert answered() == before + 1


def test_tokens_guard_the_protocol_as_they_guard_our_api(tmp_path):
    tokens_file = tmp_path / "tokens.json"
    admin, reader = tokens.create(tokens_file, "admin", ["admin"]), tokens.create(tokens_file, "reader", ["read"], images_per_second=2)
    gateway = RunningGateway(data_dir=tmp_path / "data", gallery="none", tokens_file=tokens_file).start()
    client = triton_client.InferenceServerClient(gateway.target)
    try:
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.get_model_metadata("autoencoder_encoder")
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            client.get_model_metadata("autoencoder_encoder", headers={"authorization": f"Bearer {admin}"})
        reading = {"authorization": f"Bearer {reader}"}
        assert client.infer("autoencoder_encoder", [infer_input("image", IMAGE, "FP32")], headers=reading).as_numpy("code").shape == (2, 32)
        with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED"):  # the images quota: 2 a second, 2 spent
            client.infer("autoencoder_encoder", [infer_input("image", IMAGE, "FP32")], headers=reading)
    finally:
        client.close()
        gateway.stop()
