"""TLS and mutual TLS over real gRPC, with certificates made here: plaintext is refused, a client without a
certificate is refused under mutual TLS, and a rotated certificate is served without a restart."""
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.certificates import CertificateAuthority
from latentserve.v1 import models_pb2, models_pb2_grpc


def list_models(channel: grpc.Channel) -> int:
    return len(models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=10).models)


def secure(target: str, ca: CertificateAuthority, client=None) -> grpc.Channel:
    key, cert = (client.key_file.read_bytes(), client.cert_file.read_bytes()) if client else (None, None)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.cert_file.read_bytes(), key, cert))


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with channel, pytest.raises(grpc.RpcError) as raised:
        list_models(channel)
    return raised.value.code()


@pytest.fixture
def authority(tmp_path):
    return CertificateAuthority(tmp_path, "server-ca")


def test_a_tls_gateway_serves_tls_and_refuses_plaintext(start_gateway, tmp_path, authority):
    server = authority.issue("gateway", server=True)
    gateway = start_gateway(data_dir=tmp_path / "data", gallery="none", tls_cert_file=server.cert_file, tls_key_file=server.key_file)
    with secure(gateway.target, authority) as channel:
        assert list_models(channel) > 0
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert refused(grpc.insecure_channel(gateway.target)) == grpc.StatusCode.UNAVAILABLE
    assert refused(secure(gateway.target, CertificateAuthority(tmp_path, "other-ca"))) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_admits_only_clients_the_client_ca_signed(start_gateway, tmp_path, authority):
    server = authority.issue("gateway", server=True)
    clients = CertificateAuthority(tmp_path, "client-ca")
    gateway = start_gateway(data_dir=tmp_path / "data", gallery="none", tls_cert_file=server.cert_file,
                            tls_key_file=server.key_file, tls_client_ca_file=clients.cert_file)
    with secure(gateway.target, authority, clients.issue("batch-job", server=False)) as channel:
        assert list_models(channel) > 0
    assert refused(secure(gateway.target, authority)) == grpc.StatusCode.UNAVAILABLE
    stranger = CertificateAuthority(tmp_path, "stranger-ca").issue("stranger", server=False)
    assert refused(secure(gateway.target, authority, stranger)) == grpc.StatusCode.UNAVAILABLE


def test_a_rotated_certificate_is_served_without_a_restart(start_gateway, tmp_path, authority):
    served = authority.issue("gateway", server=True)
    gateway = start_gateway(data_dir=tmp_path / "data", gallery="none", tls_cert_file=served.cert_file, tls_key_file=served.key_file)
    with secure(gateway.target, authority) as channel:
        assert list_models(channel) > 0
    # The new certificate comes from another CA, so only a client trusting that CA can tell it is served.
    (tmp_path / "next").mkdir()
    successor = CertificateAuthority(tmp_path / "next", "next-ca")
    rotated = successor.issue("gateway", server=True)
    served.key_file.write_bytes(rotated.key_file.read_bytes())
    served.cert_file.write_bytes(rotated.cert_file.read_bytes())
    with secure(gateway.target, successor) as channel:
        assert list_models(channel) > 0
    assert refused(secure(gateway.target, authority)) == grpc.StatusCode.UNAVAILABLE


def test_the_cli_speaks_mutual_tls(start_gateway, tmp_path, authority):
    server = authority.issue("gateway", server=True)
    clients = CertificateAuthority(tmp_path, "client-ca")
    client = clients.issue("cli", server=False)
    gateway = start_gateway(data_dir=tmp_path / "data", gallery="none", tls_cert_file=server.cert_file,
                            tls_key_file=server.key_file, tls_client_ca_file=clients.cert_file)
    command = [sys.executable, "-m", "latentserve.cli", "models", "--target", gateway.target, "--tls-ca", str(authority.cert_file)]
    with_certificate = subprocess.run(command + ["--tls-cert", str(client.cert_file), "--tls-key", str(client.key_file)],
                                      capture_output=True, text=True, timeout=60)
    assert with_certificate.returncode == 0 and "autoencoder" in with_certificate.stdout, with_certificate.stderr
    without = subprocess.run(command + ["--connect-timeout", "2"], capture_output=True, text=True, timeout=60)
    assert without.returncode == 1 and without.stderr.startswith("error: UNAVAILABLE"), without.stderr
