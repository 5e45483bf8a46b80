"""The gateway end to end over real gRPC on loopback, with the committed models."""
import io
import json
import logging
import socket
import time

import grpc
import numpy as np
import onnxruntime
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, models_pb2, models_pb2_grpc, search_pb2, search_pb2_grpc
from latentserve import repository
from benchmarks.fuzz import huge_png_header
from serving import convert
from serving.errors import ResourceExhausted
from serving.settings import Settings
from tests.conftest import MODEL_REPOSITORY, Records, RunningGateway, assert_refused, wait_for


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    # 4,000 predictions a message: PropagateLabels over the 10k gallery arrives in three
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), propagation_chunk_items=4000).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(gateway):
    with gateway.channel() as channel:
        yield channel


def test_a_gateway_on_an_automatically_chosen_port_keeps_it_to_itself(gateway):
    # grpc's SO_REUSEPORT would let a second socket (another server's) bind the same port and take some
    # of its connections (grpc/grpc#10755); the option is off on port 0, so such a bind fails
    intruder = socket.socket()
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with intruder, pytest.raises(OSError, match="in use"):
        intruder.bind(("127.0.0.1", gateway.server.port))


def png(pixels: np.ndarray) -> common_pb2.Image:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return common_pb2.Image(encoded=buffer.getvalue())


def raw(pixels: np.ndarray, dtype=common_pb2.DATA_TYPE_UINT8, shape=None) -> common_pb2.Tensor:
    return common_pb2.Tensor(shape=shape or list(pixels.shape), dtype=dtype, data=pixels.tobytes())


def tensor(pixels: np.ndarray, dtype=common_pb2.DATA_TYPE_UINT8, shape=None) -> common_pb2.Image:
    return common_pb2.Image(tensor=raw(pixels, dtype, shape))


def batch(*images: common_pb2.Image) -> common_pb2.Images:
    """Encoded images as a batch."""
    return common_pb2.Images(encoded=common_pb2.EncodedImages(images=[image.encoded for image in images]))


def codes_of(response) -> tuple[np.ndarray, np.ndarray]:
    """(codes, unpacked bits) of an EncodeResponse."""
    codes = np.frombuffer(response.codes.data, "<f4").reshape(response.codes.shape)
    packed = np.frombuffer(response.bits.data, np.uint8).reshape(response.bits.shape)
    return codes, np.unpackbits(packed, axis=1)[:, : response.num_bits]


def uint8_images(mnist, n: int, start: int = 0) -> np.ndarray:
    return (mnist.test.images[start : start + n] * 255).round().astype(np.uint8)


def index_model_session():
    entry = repository.read_repository(MODEL_REPOSITORY)["autoencoder_encoder"]
    path = entry.version_path(entry.versions[0]) / repository.ONNX_FILE
    return entry, onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_health_reports_each_service_serving_once_loaded(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "latentserve.v1.Models", "latentserve.v1.Encoder", "latentserve.v1.Search"):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_public_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (response,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for service in response.list_services_response.service}
    public = {"Models", "Encoder", "Search", "Generator", "Classifier"}
    assert {f"latentserve.v1.{name}" for name in public} | {"grpc.health.v1.Health"} <= names


def test_reflection_can_be_turned_off(start_gateway, tmp_path):
    gateway = start_gateway(data_dir=tmp_path, gallery="none", reflection=False)
    with gateway.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_models_lists_versions_signatures_and_card_metrics(channel):
    stub = models_pb2_grpc.ModelsStub(channel)
    models = {m.name: m for m in stub.ListModels(models_pb2.ListModelsRequest()).models}
    assert {"autoencoder", "vae"} <= set(models)
    (graph,) = models["autoencoder"].graphs
    assert (graph.name, graph.capability, graph.repository_name) == ("encoder", "encode", "autoencoder_encoder")
    assert [t.name for t in graph.outputs] == ["code", "binary_code"]
    assert graph.versions and graph.versions[0].metrics["retrieval_code_map"] > 0
    assert json.loads(graph.versions[0].card_json)["model"] == "autoencoder"
    assert stub.GetModel(models_pb2.GetModelRequest(name="vae")).graphs[0].capability == "encode"


def test_encode_matches_onnxruntime_for_png_and_raw_tensors(channel, mnist):
    pixels = uint8_images(mnist, 4)
    entry, session = index_model_session()
    want_code, want_bits = session.run(["code", "binary_code"], {"image": pixels[:, None].astype(np.float32) / 255})
    stub = encoder_pb2_grpc.EncoderStub(channel)
    requests = {
        "png": batch(*[png(p) for p in pixels]),
        "uint8": common_pb2.Images(tensor=raw(pixels)),
        "float32": common_pb2.Images(tensor=raw(pixels.astype(np.float32) / 255, common_pb2.DATA_TYPE_FLOAT32, [4, 1, 28, 28])),
    }
    for kind, images in requests.items():
        response = stub.Encode(encoder_pb2.EncodeRequest(images=images))
        assert (response.model.name, response.model.version) == ("autoencoder", entry.versions[0])
        codes, bits = codes_of(response)
        np.testing.assert_allclose(codes, want_code, atol=1e-5, err_msg=kind)
        np.testing.assert_array_equal(bits, want_bits, err_msg=kind)


def test_encode_resizes_other_sizes_and_selects_model_and_version(channel, mnist):
    stub = encoder_pb2_grpc.EncoderStub(channel)
    big = np.kron(uint8_images(mnist, 1)[0], np.ones((2, 2), np.uint8))  # 56x56: box filter gives back 28x28
    small, _ = codes_of(stub.Encode(encoder_pb2.EncodeRequest(images=common_pb2.Images(tensor=raw(uint8_images(mnist, 1))))))
    resized, _ = codes_of(stub.Encode(encoder_pb2.EncodeRequest(images=batch(png(big)))))
    np.testing.assert_allclose(resized, small, atol=1e-5)
    vae = stub.Encode(encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(name="vae", version=1), images=batch(png(big))))
    assert vae.model.version == 1 and list(vae.codes.shape) == [1, 20] and vae.num_bits == 20


def test_default_gallery_search_by_id_finds_the_same_digit(channel, mnist):
    stub = search_pb2_grpc.SearchStub(channel)
    stats = stub.GetIndexStats(search_pb2.GetIndexStatsRequest())
    assert stats.items >= 10000 and stats.model.name == "autoencoder"
    agreement = []
    for i in range(20):
        for space in (search_pb2.SPACE_CODE, search_pb2.SPACE_HASH):
            hits = stub.Search(search_pb2.SearchRequest(id=f"mnist-test-{i:05d}", k=10, space=space)).hits
            assert len(hits) == 10 and f"mnist-test-{i:05d}" not in [h.id for h in hits]
            assert [h.distance for h in hits] == sorted(h.distance for h in hits)
            agreement += [h.label == mnist.test.labels[i] for h in hits]
    assert np.mean(agreement) > 0.8


def test_add_search_and_delete_items(channel, mnist):
    stub = search_pb2_grpc.SearchStub(channel)
    before = stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items
    pixels = uint8_images(mnist, 3, start=100)
    items = [search_pb2.Item(id=f"client-{i}", image=png(p), label=7, metadata={"source": "test"}) for i, p in enumerate(pixels)]
    assert stub.AddItems(search_pb2.AddItemsRequest(items=items)).added == 3
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items == before + 3

    top = stub.Search(search_pb2.SearchRequest(image=png(pixels[1]), k=1)).hits[0]
    assert top.id in ("client-1", "mnist-test-00101") and top.distance < 1e-3  # the gallery holds the same image; float32 L2 rounding
    hit = next(h for h in stub.Search(search_pb2.SearchRequest(image=png(pixels[1]), k=5)).hits if h.id == "client-1")
    assert (hit.label, dict(hit.metadata)) == (7, {"source": "test"})

    response = encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(images=batch(png(pixels[2]))))
    values, _ = codes_of(response)
    by_code = stub.Search(search_pb2.SearchRequest(code=common_pb2.Code(values=values[0]), k=2)).hits
    bits = common_pb2.Code(bits=response.bits.data, num_bits=response.num_bits)
    by_bits = stub.Search(search_pb2.SearchRequest(code=bits, k=50, space=search_pb2.SPACE_HASH)).hits
    assert "client-2" in [h.id for h in by_code] and "client-2" in [h.id for h in by_bits]
    assert by_bits[0].distance == 0

    assert stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["client-0", "client-1", "client-2"])).deleted == 3
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items == before


GOOD = png(np.pad(np.full((12, 12), 255, np.uint8), 8))
INVALID, MISSING = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED, EXISTS = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS


def encode(**fields):
    return "Encoder", "Encode", encoder_pb2.EncodeRequest(**fields)


def propagate(**fields):
    return "Search", "PropagateLabels", search_pb2.PropagateLabelsRequest(**fields)


def search(**fields):
    return "Search", "Search", search_pb2.SearchRequest(**fields)


def add(*items):
    return "Search", "AddItems", search_pb2.AddItemsRequest(items=list(items))


def delete(*ids):
    return "Search", "DeleteItems", search_pb2.DeleteItemsRequest(ids=list(ids))


FLOAT = common_pb2.DATA_TYPE_FLOAT32
BAD_REQUESTS = {
    "undecodable bytes": (encode(images=batch(common_pb2.Image(encoded=b"not an image"))), INVALID, "images.encoded.images[0]"),
    "truncated png": (encode(images=batch(GOOD, common_pb2.Image(encoded=GOOD.encoded[:60]))), INVALID, "images.encoded.images[1]"),
    "no images message": (encode(), INVALID, "images"),
    "wrong shape": (encode(images=common_pb2.Images(tensor=raw(np.zeros((2, 27, 28), np.uint8)))), INVALID, "images.tensor.shape"),
    "wrong dtype": (encode(images=common_pb2.Images(tensor=raw(np.zeros((1, 28, 28), np.uint8), dtype=0))), INVALID, "images.tensor.dtype"),
    "short data": (encode(images=common_pb2.Images(tensor=raw(np.zeros((28, 27), np.uint8), shape=[1, 28, 28]))), INVALID, "images.tensor.data"),
    "nan pixels": (encode(images=common_pb2.Images(tensor=raw(np.full((1, 28, 28), np.nan, np.float32), FLOAT))), INVALID, "images.tensor.data"),
    "inf pixels": (encode(images=common_pb2.Images(tensor=raw(np.full((1, 28, 28), np.inf, np.float32), FLOAT))), INVALID, "images.tensor.data"),
    "pixels above 1": (encode(images=common_pb2.Images(tensor=raw(np.full((1, 28, 28), 2, np.float32), FLOAT))), INVALID, "images.tensor.data"),
    "empty batch": (encode(images=batch()), INVALID, "images"),
    "empty tensor": (encode(images=common_pb2.Images(tensor=raw(np.zeros((0, 28, 28), np.uint8)))), INVALID, "images"),
    "oversized batch": (encode(images=batch(*[GOOD] * 257)), EXHAUSTED, "images"),
    "unknown model": (encode(model=common_pb2.ModelRef(name="nope"), images=batch(GOOD)), MISSING, "model.name"),
    "unknown version": (encode(model=common_pb2.ModelRef(name="autoencoder", version=999), images=batch(GOOD)), MISSING, "model.version"),
    "negative version": (encode(model=common_pb2.ModelRef(name="autoencoder", version=-1), images=batch(GOOD)), INVALID, "model.version"),
    "search image of wrong shape": (search(image=tensor(np.zeros((2, 28, 28), np.uint8))), INVALID, "image.tensor.shape"),
    "negative k": (search(id="mnist-test-00000", k=-1), INVALID, "k"),
    "k over limit": (search(id="mnist-test-00000", k=1001), EXHAUSTED, "k"),
    "unknown id": (search(id="no-such-id"), MISSING, "id"),
    "no query": (search(k=3), INVALID, "query"),
    "code of wrong length": (search(code=common_pb2.Code(values=[0.0] * 5)), INVALID, "code.values"),
    "nan code": (search(code=common_pb2.Code(values=[float("nan")] * 32)), INVALID, "code.values"),
    "bits of wrong length": (search(code=common_pb2.Code(bits=b"\x00", num_bits=8), space=search_pb2.SPACE_HASH), INVALID, "code.bits"),
    "duplicate ids": (add(search_pb2.Item(id="d", image=GOOD), search_pb2.Item(id="d", image=GOOD)), INVALID, "items[1].id"),
    "id already stored": (add(search_pb2.Item(id="new", image=GOOD), search_pb2.Item(id="mnist-test-00000", image=GOOD)), EXISTS, "items.id"),
    "empty id": (add(search_pb2.Item(id="", image=GOOD)), INVALID, "items[0].id"),
    "bad image among good": (add(search_pb2.Item(id="x", image=GOOD), search_pb2.Item(id="y")), INVALID, "items[1].image"),
    "no items": (add(), INVALID, "items"),
    "delete unknown id": (delete("mnist-test-00001", "nope"), MISSING, "ids"),
    "delete nothing": (delete(), INVALID, "ids"),
    "unknown model name": (("Models", "GetModel", models_pb2.GetModelRequest(name="nope")), MISSING, "name"),
    "propagate no labels": (propagate(), INVALID, "labels"),
    "propagate unknown id": (propagate(labels={"mnist-test-00000": 7, "nope": 1}), MISSING, "labels"),
    "propagate negative label": (propagate(labels={"mnist-test-00000": -2}), INVALID, "labels"),
    "propagate negative neighbours": (propagate(labels={"mnist-test-00000": 7}, neighbours=-1), INVALID, "neighbours"),
    "propagate neighbours over limit": (propagate(labels={"mnist-test-00000": 7}, neighbours=101), EXHAUSTED, "neighbours"),
    "propagate unknown method": (propagate(labels={"mnist-test-00000": 7}, method=9), INVALID, "method"),
}
STUBS = {"Encoder": encoder_pb2_grpc.EncoderStub, "Search": search_pb2_grpc.SearchStub, "Models": models_pb2_grpc.ModelsStub}


@pytest.mark.parametrize("method", [search_pb2.PROPAGATION_SPREADING, search_pb2.PROPAGATION_HARMONIC])
def test_propagate_labels_over_the_gallery_from_ten_per_class(channel, mnist, method):
    labels = mnist.test.labels
    seeds = {f"mnist-test-{i:05d}": c for c in range(10) for i in np.flatnonzero(labels == c)[:10]}
    stub = search_pb2_grpc.SearchStub(channel)
    chunks = list(stub.PropagateLabels(search_pb2.PropagateLabelsRequest(labels=seeds, method=method)))
    assert [len(chunk.predictions) for chunk in chunks] == [4000, 4000, 2000]
    predicted = {p.id: (p.label, p.confidence) for chunk in chunks for p in chunk.predictions}
    assert list(predicted) == [f"mnist-test-{i:05d}" for i in range(len(labels))]  # each item once, in order
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items == len(labels)
    rest = [i for i in range(len(labels)) if f"mnist-test-{i:05d}" not in seeds]
    guesses = np.asarray([predicted[f"mnist-test-{i:05d}"][0] for i in rest])
    accuracy = (guesses == labels[rest]).mean()
    assert accuracy > 0.9  # measured 0.935 (spreading) and 0.927 (harmonic) on the autoencoder v2 codes
    assert all(0 < confidence <= 1 for _, confidence in predicted.values())


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_precise_status_and_changes_nothing(channel, case):
    (service, method, request), code, field = BAD_REQUESTS[case]
    search_stub = search_pb2_grpc.SearchStub(channel)
    items_before = search_stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items
    with pytest.raises(grpc.RpcError) as raised:
        reply = getattr(STUBS[service](channel), method)(request)
        if isinstance(reply, grpc.Call):
            list(reply)  # a server stream raises when it is read
    assert_refused(raised.value, code, field)
    assert search_stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items == items_before
    assert search_stub.Search(search_pb2.SearchRequest(id="mnist-test-00002", k=1)).hits  # still serving


def test_restart_keeps_acknowledged_items(start_gateway, tmp_path, mnist):
    first = start_gateway(data_dir=tmp_path, gallery="none")
    with first.channel() as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        items = [search_pb2.Item(id=f"kept-{i}", image=tensor(p), label=i) for i, p in enumerate(uint8_images(mnist, 5))]
        stub.AddItems(search_pb2.AddItemsRequest(items=items))
        stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["kept-4"]))
        before = stub.Search(search_pb2.SearchRequest(id="kept-0", k=3)).hits
    first.stop()
    second = start_gateway(data_dir=tmp_path, gallery="none")
    with second.channel() as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items == 4
        assert stub.Search(search_pb2.SearchRequest(id="kept-0", k=3)).hits == before


def test_a_service_is_not_serving_until_its_models_load(start_gateway, tmp_path):
    gateway = start_gateway(wait=False, data_dir=tmp_path, index_model="no-such-encoder")
    with pytest.raises(Exception, match="no encoder 'no-such-encoder'"):
        gateway.wait_loaded()  # the search index cannot bind to a missing encoder
    with gateway.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = {
            service: health.Check(health_pb2.HealthCheckRequest(service=f"latentserve.v1.{service}")).status
            for service in ("Models", "Encoder", "Search")
        }
        up, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert status == {"Models": up, "Encoder": down, "Search": down}  # Encoder's default model is the index model
        with pytest.raises(grpc.RpcError) as raised:
            search_pb2_grpc.SearchStub(channel).GetIndexStats(search_pb2.GetIndexStatsRequest())
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        request = encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(name="autoencoder"), images=batch(GOOD))
        assert encoder_pb2_grpc.EncoderStub(channel).Encode(request).codes


def test_messages_over_the_size_limit_are_refused(start_gateway, tmp_path):
    gateway = start_gateway(data_dir=tmp_path, gallery="none", max_message_bytes=12288, max_batch_images=2, propagation_chunk_items=10, max_k=1)
    with gateway.channel() as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Encode(encoder_pb2.EncodeRequest(images=common_pb2.Images(tensor=raw(np.zeros((4, 28, 28), np.float32), FLOAT))))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in raised.value.details()  # refused by gRPC for its size, before any decoding
        assert stub.Encode(encoder_pb2.EncodeRequest(images=batch(GOOD))).num_bits == 32


def test_cli_client_verbs(gateway, tmp_path, capsys):
    from latentserve.cli import main

    def stored_items() -> int:
        main(["index", "stats", "--target", gateway.target, "--json"])
        return int(json.loads(capsys.readouterr().out)["items"])

    path = tmp_path / "digit.png"
    path.write_bytes(GOOD.encoded)
    before = stored_items()
    main(["index", "add", "--target", gateway.target, str(path), "--label", "3", "--meta", "who=cli"])
    capsys.readouterr()
    assert stored_items() == before + 1
    main(["search", "--target", gateway.target, "--image", str(path), "-k", "1", "--json"])
    hit = json.loads(capsys.readouterr().out)
    assert (hit["id"], hit["label"], hit["metadata"]) == ("digit", 3, {"who": "cli"}) and hit["distance"] < 1e-3
    main(["index", "delete", "--target", gateway.target, "digit"])
    capsys.readouterr()
    assert stored_items() == before
    main(["encode", "--target", gateway.target, str(path), "--json"])
    encoded = json.loads(capsys.readouterr().out)
    assert (encoded["num_bits"], len(encoded["code"]), len(encoded["bits"])) == (32, 32, 8)


@pytest.mark.slow
def test_embedded_runtime_follows_new_and_broken_versions(start_gateway, tmp_path, small_mnist):
    import shutil

    from export.exporter import export_checkpoint
    from training.train import train

    repo = tmp_path / "repository"
    shutil.copytree(MODEL_REPOSITORY, repo)
    shipped = repository.read_repository(repo)["autoencoder_encoder"].versions[0]
    gateway = start_gateway(model_repository=repo, data_dir=tmp_path / "data", gallery="none", health_poll_seconds=0.2)
    checkpoint = train("autoencoder", tmp_path / "run", small_mnist, {"epochs": 1}, threads=1)
    with gateway.channel() as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        assert stub.Encode(encoder_pb2.EncodeRequest(images=batch(GOOD))).model.version == shipped
        (new_version,) = export_checkpoint(checkpoint, repo, small_mnist)
        broken = new_version.with_name(str(shipped + 2))
        wait_for(lambda: stub.Encode(encoder_pb2.EncodeRequest(images=batch(GOOD))).model.version == shipped + 1)
        shutil.copytree(new_version, broken.with_name(".tmp"))
        (broken.with_name(".tmp") / repository.ONNX_FILE).write_bytes(b"not an onnx file")
        broken.with_name(".tmp").rename(broken)  # the newest version now cannot load
        time.sleep(1.0)
        assert stub.Encode(encoder_pb2.EncodeRequest(images=batch(GOOD))).model.version == shipped + 1


def test_settings_refuse_limits_whose_messages_would_not_fit():
    with pytest.raises(ValueError, match="max_message_bytes"):
        Settings(max_batch_images=10_000, max_message_bytes=1024 * 1024)
    with pytest.raises(ValueError, match="propagation_chunk_items .* needs max_message_bytes"):
        Settings(propagation_chunk_items=100_000)  # 100k ids of up to 256 bytes: over 16 MiB
    assert Settings(max_batch_images=256).max_message_bytes == 16 * 1024 * 1024


# Issue 31: inputs a fuzzer found (benchmarks/fuzz.py) that got the wrong status, a traceback or a reply
# that did not fit, one test per kind.
def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        reply = call()
        if isinstance(reply, grpc.Call):
            list(reply)
    return raised.value


def test_a_body_that_does_not_parse_is_invalid_argument_without_a_traceback(channel):
    records, root = Records(), logging.getLogger()
    root.addHandler(records)
    try:
        for method in ("/latentserve.v1.Encoder/Encode", "/latentserve.v1.Search/PropagateLabels"):
            call = channel.unary_stream(method) if method.endswith("PropagateLabels") else channel.unary_unary(method)
            assert_refused(refused(lambda: call(b"\xff")), INVALID, "request")  # a field tag with no field number
    finally:
        root.removeHandler(records)
    assert not [line for line in records.lines if "Traceback" in line or "DecodeError" in line]


def test_an_image_declaring_more_pixels_than_allowed_is_resource_exhausted_before_decoding(channel):
    for side in (5000, 70_000):  # over max_image_pixels; and over Pillow's own limit, which it enforces on open
        image = common_pb2.Image(encoded=huge_png_header(side, side) + GOOD.encoded[33:])
        error = refused(lambda: encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(images=batch(image))))
        assert error.code() == EXHAUSTED and error.details().startswith("images"), error.details()  # the image's or the request's limit
        with pytest.raises(ResourceExhausted, match="image.encoded"):
            convert.decode_image(image, "image", Settings().max_image_pixels)


def test_messages_show_no_heap_address(channel):
    error = refused(lambda: encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(images=batch(common_pb2.Image(encoded=b"not an image")))))
    assert error.code() == INVALID and "0x" not in error.details() and "object at" not in error.details()


def test_empty_ids_are_invalid_argument_on_every_call_taking_ids(channel):
    stub = search_pb2_grpc.SearchStub(channel)
    assert_refused(refused(lambda: stub.Search(search_pb2.SearchRequest(id=""))), INVALID, "id")
    assert_refused(refused(lambda: stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["mnist-test-00003", ""]))), INVALID, "ids[1]")
    assert_refused(refused(lambda: stub.PropagateLabels(search_pb2.PropagateLabelsRequest(labels={"": 1}))), INVALID, "labels")
    assert_refused(refused(lambda: stub.Search(search_pb2.SearchRequest(id="x" * 257))), INVALID, "id")
    assert stub.Search(search_pb2.SearchRequest(id="mnist-test-00003", k=1)).hits  # nothing was deleted


def test_errors_never_echo_a_clients_id_and_always_fit(channel):
    stub, long_id = search_pb2_grpc.SearchStub(channel), "z" * 250
    item = search_pb2.Item(id="mnist-test-00004", image=GOOD)
    for call, code, field in [
        (lambda: stub.Search(search_pb2.SearchRequest(id=long_id)), MISSING, "id"),
        (lambda: stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["mnist-test-00004", long_id])), MISSING, "ids"),
        (lambda: stub.PropagateLabels(search_pb2.PropagateLabelsRequest(labels={long_id: 1})), MISSING, "labels"),
        (lambda: stub.PropagateLabels(search_pb2.PropagateLabelsRequest(labels={long_id: -1})), INVALID, "labels"),
        (lambda: stub.AddItems(search_pb2.AddItemsRequest(items=[search_pb2.Item(id="fresh", image=GOOD), item])), EXISTS, "items.id"),
    ]:
        error = refused(call)
        assert_refused(error, code, field)
        assert "zzz" not in error.details() and "mnist-test" not in error.details(), error.details()
    error = refused(lambda: models_pb2_grpc.ModelsStub(channel).GetModel(models_pb2.GetModelRequest(name="n" * 100_000)))
    assert error.code() == MISSING and len(error.details()) <= 1000  # cut to fit the status, not a metadata-size error


def test_metadata_over_its_limits_is_resource_exhausted_and_max_k_hits_fit_a_message(channel):
    stub = search_pb2_grpc.SearchStub(channel)
    before = stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items
    large = search_pb2.Item(id="large", image=GOOD, metadata={"notes": "n" * 5000})
    assert_refused(refused(lambda: stub.AddItems(search_pb2.AddItemsRequest(items=[large]))), EXHAUSTED, "items[0].metadata")
    many = [search_pb2.Item(id=f"meta-{i}", image=GOOD, metadata={"notes": "n" * 4000}) for i in range(70)]  # 70 x 4 KB > 256 KiB
    assert_refused(refused(lambda: stub.AddItems(search_pb2.AddItemsRequest(items=many))), EXHAUSTED, "items")
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest()).items == before
    with pytest.raises(ValueError, match="max_k .* needs max_message_bytes"):
        Settings(max_k=10_000)  # 10,000 hits of 4 KiB metadata: over 16 MiB


def test_labels_of_too_many_classes_are_resource_exhausted(channel):
    labels = {f"mnist-test-{i:05d}": i for i in range(101)}
    assert_refused(refused(lambda: search_pb2_grpc.SearchStub(channel).PropagateLabels(search_pb2.PropagateLabelsRequest(labels=labels))),
                   EXHAUSTED, "labels")


def test_a_cancelled_stream_logs_no_error(channel):
    from latentserve.v1 import generator_pb2, generator_pb2_grpc

    records, root = Records(), logging.getLogger()
    records.setLevel(logging.WARNING)
    root.addHandler(records)
    try:
        streams = [
            generator_pb2_grpc.GeneratorStub(channel).GenerateStream(generator_pb2.GenerateStreamRequest(count=1_000_000, chunk_size=16)),
            search_pb2_grpc.SearchStub(channel).PropagateLabels(search_pb2.PropagateLabelsRequest(labels={"mnist-test-00000": 1})),
        ]
        next(streams[0])
        for stream in streams:
            stream.cancel()
        time.sleep(1)
    finally:
        root.removeHandler(records)
    assert records.lines == []
