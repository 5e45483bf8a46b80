"""`latentserve bench security`: what TLS and token checks cost per call. Encode on the shipped
autoencoder through two gateway processes started side by side, one plaintext without tokens and one with
TLS and a tokens file, at batch 1 and 64 and concurrency 1 and 8; the two are measured cell by cell in
turn (so both see the same machine), each cell for `duration` seconds. Images travel as one raw uint8
tensor per request, as in `bench serving`; the token has quotas high enough never to refuse a call."""
import asyncio
import tempfile
from pathlib import Path

import grpc
import numpy as np

from benchmarks.certificates import CertificateAuthority
from benchmarks.gateway import BATCHES, CONCURRENCY, process_cpu_seconds, drive, gateway_process, summary
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from serving import tokens

UNLIMITED = 1e9  # requests or images per second: far above what 2 cores serve


async def encode(target: str, pid: int, images: np.ndarray, concurrency: int, duration: float,
                 credentials: grpc.ChannelCredentials | None, token: str | None) -> dict[str, float]:
    request = encoder_pb2.EncodeRequest(images=common_pb2.Images(tensor=common_pb2.Tensor(
        shape=images.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=images.tobytes())))
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    async with channel:
        call = encoder_pb2_grpc.EncoderStub(channel).Encode
        cpu = process_cpu_seconds(pid)
        latencies, elapsed = await drive(lambda: call(request, metadata=metadata), concurrency, duration)
        cpu = process_cpu_seconds(pid) - cpu
    return summary(latencies, elapsed, len(images), cpu)


def main(repository_root: Path, duration: float) -> None:
    test_images = (load_mnist().test.images * 255).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        authority = CertificateAuthority(directory, "bench-ca")
        server = authority.issue("gateway", server=True)
        tokens_file = directory / "tokens.json"
        token = tokens.create(tokens_file, "bench", ["read"], UNLIMITED, UNLIMITED)
        credentials = grpc.ssl_channel_credentials(authority.cert_file.read_bytes())
        secured_flags = ("--tls-cert", str(server.cert_file), "--tls-key", str(server.key_file), "--tokens-file", str(tokens_file))
        with gateway_process(repository_root) as plain, \
                gateway_process(repository_root, *secured_flags, ca_file=authority.cert_file) as secured:
            print(f"Encode, autoencoder, {duration:.0f} s per cell; plaintext vs TLS + token, measured in turn\n")
            print("| batch | concurrency | plaintext img/s | TLS + token img/s | TLS + token / plaintext | "
                  "CPU ms / request, plaintext | CPU ms / request, TLS + token |")
            print("|---|---|---|---|---|---|---|")
            for batch in BATCHES:
                for concurrency in CONCURRENCY:
                    images = test_images[:batch]
                    a = asyncio.run(encode(*plain, images, concurrency, duration, None, None))
                    b = asyncio.run(encode(*secured, images, concurrency, duration, credentials, token))
                    print(f"| {batch} | {concurrency} | {a['images_per_s']:.0f} | {b['images_per_s']:.0f} | "
                          f"{b['images_per_s'] / a['images_per_s']:.0%} | {a['cpu_ms_per_request']:.2f} | "
                          f"{b['cpu_ms_per_request']:.2f} |", flush=True)
