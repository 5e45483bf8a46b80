"""The client library (latentserve/client.py) against a real gateway: arrays and PIL images in, typed
results out, statuses as typed exceptions, sync and asyncio, TLS and tokens."""
import asyncio

import numpy as np
import pytest
from PIL import Image

from benchmarks.certificates import CertificateAuthority
from latentserve.client import AsyncClient, Client, InvalidArgument, Item, NotFound, ResourceExhausted, Unauthenticated, Unavailable
from serving import tokens
from tests.conftest import RunningGateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(gateway):
    with Client(gateway.target, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def digits(small_mnist) -> np.ndarray:
    return (small_mnist.test.images[:6].reshape(6, 28, 28) * 255).round().astype(np.uint8)


def test_encode_takes_arrays_pil_images_and_files_alike(client, digits):
    as_array = client.encode(digits)
    as_pictures = client.encode([Image.fromarray(digit) for digit in digits])
    assert as_array.values.shape == (6, 32) and as_array.bits.shape == (6, 4) and as_array.num_bits == 32
    assert np.array_equal(as_array.values, as_pictures.values) and as_array.model == as_pictures.model
    assert np.allclose(client.encode(digits[0]).values, as_array.values[:1], atol=1e-5)  # one (28, 28) image; batches differ in rounding
    assert np.array_equal(client.encode(list(digits)).values, as_array.values)  # a list of arrays: one tensor


def test_classify_translate_and_generate_return_arrays(client, digits):
    classes = client.classify(digits)
    assert classes.probabilities.shape == (6, 10) and np.array_equal(classes.labels, classes.probabilities.argmax(1))
    translated = client.translate(digits, "mnist2uci")
    assert translated.images.shape == (6, 28, 28) and translated.direction == "mnist2uci"
    whole = client.generate(4, seed=3, labels=[1, 2, 3, 4])
    assert whole.images.shape == (4, 28, 28) and whole.labels == (1, 2, 3, 4) and whole.latents.shape[0] == 4
    second_half = client.generate(2, seed=3, labels=[3, 4], start_index=2)
    assert np.array_equal(second_half.images, whole.images[2:])
    redrawn = client.generate_from(whole.latents, labels=whole.labels)  # the same latents and classes: the same images
    assert np.array_equal(redrawn.images, whole.images) and redrawn.labels == whole.labels
    assert [len(chunk.png) for chunk in client.generate_stream(5, seed=1, chunk_size=2, png=True)] == [2, 2, 1]
    assert client.interpolate(1, 2, steps=5).images.shape == (5, 28, 28)


def test_items_collections_and_search(client, digits):
    client.create_collection("client", keep_images=True)
    try:
        assert client.add_items([Item(f"d{i}", digit, label=i, metadata={"n": str(i)}) for i, digit in enumerate(digits)], "client") == 6
        hits = client.search(image=digits[2], k=3, collection="client")
        assert hits[0].id == "d2" and hits[0].label == 2 and hits[0].metadata == {"n": "2"}
        assert {hit.id for hit in client.search(id="d2", k=5, collection="client", filter="label in [0, 1]")} == {"d0", "d1"}
        (stored,) = client.get_items(["d4", "nope"], "client", with_images=True)
        assert stored.label == 4 and stored.code.shape == (32,) and stored.image is not None
        assert [len(result) for result in client.search_batch(digits[:2], k=2, collection="client")] == [2, 2]
        assert client.upsert_items([Item("d0", digits[0], label=9)], "client") == (0, 1)
        assert client.delete_items(filter="label == 9", collection="client") == 1
        assert {c.name: c.items for c in client.collections()}["client"] == 5 and client.collection("client").keep_images
    finally:
        client.drop_collection("client")
    assert "client" not in {c.name for c in client.collections()}


def test_refusals_are_typed_errors_naming_the_field(client):
    with pytest.raises(InvalidArgument) as raised:
        client.encode(np.zeros((2, 27, 27), np.uint8))
    assert raised.value.field == "images.tensor.shape" and "want [N, 28, 28]" in raised.value.message
    with pytest.raises(NotFound) as raised:
        client.encode(np.zeros((1, 28, 28), np.uint8), model="no_such_model")
    assert raised.value.field == "model.name"
    with pytest.raises(ValueError, match="exactly one of"):
        client.search(image=np.zeros((28, 28)), id="x")


def test_the_async_client_makes_the_same_calls(gateway, digits):
    async def scenario():
        async with AsyncClient(gateway.target, timeout=60) as client:
            codes = await client.encode(digits)
            graphs = await client.models()
            chunks = [chunk async for chunk in client.generate_stream(3, seed=2, chunk_size=2)]
            with pytest.raises(InvalidArgument):
                await client.classify(np.zeros((1, 3, 3), np.uint8))
            return codes, graphs, chunks

    codes, graphs, chunks = asyncio.run(scenario())
    with Client(gateway.target) as client:
        assert np.array_equal(codes.values, client.encode(digits).values)
    assert ("autoencoder", "encoder", "encode") in {(g.model, g.name, g.capability) for g in graphs}
    assert [chunk.start_index for chunk in chunks] == [0, 2] and chunks[1].images.shape == (1, 28, 28)


def test_tokens_and_tls(tmp_path):
    authority = CertificateAuthority(tmp_path, "ca")
    server = authority.issue("gateway", server=True)
    tokens_file = tmp_path / "tokens.json"
    token = tokens.create(tokens_file, "reader", ["read"], images_per_second=1)
    gateway = RunningGateway(data_dir=tmp_path / "data", gallery="none", tokens_file=tokens_file,
                             tls_cert_file=server.cert_file, tls_key_file=server.key_file).start()
    try:
        with Client(gateway.target, tls_ca=authority.cert_file, timeout=30) as anonymous:
            with pytest.raises(Unauthenticated):
                anonymous.models()
        with Client(gateway.target, token=token, tls_ca=authority.cert_file, timeout=30) as client:
            assert client.models()
            client.encode(np.zeros((1, 28, 28), np.uint8))
            with pytest.raises(ResourceExhausted) as raised:  # one image a second, one spent
                client.encode(np.zeros((1, 28, 28), np.uint8))
            assert 0 < raised.value.retry_after <= 1
    finally:
        gateway.stop()
    with pytest.raises(Unavailable, match="no gateway at"):
        Client(gateway.target).wait_ready(0.5)
