"""TLS for the gateway, and mutual TLS when a client CA is set. The certificate, key and client CA files
are re-read when they change (gRPC asks before every new connection's handshake), so rotating them needs
no restart; a half-written pair is not taken until the key matches the certificate."""
import logging
import ssl
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class CertificateFiles:
    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None):
        self.files = [cert_file, key_file] + ([client_ca_file] if client_ca_file else [])
        self.client_ca_file = client_ca_file
        self._stamp = self._stamps()
        self.initial = self._configuration()  # at start, a broken pair is an error, not a warning

    def _stamps(self) -> tuple:
        return tuple((path.stat().st_mtime_ns, path.stat().st_size) for path in self.files)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        cert_file, key_file = self.files[:2]
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)  # raises if they do not match
        return grpc.ssl_server_certificate_configuration(
            [(key_file.read_bytes(), cert_file.read_bytes())],
            root_certificates=self.client_ca_file.read_bytes() if self.client_ca_file else None,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if a file changed and the new pair loads, else None (keep the current)."""
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except (OSError, ssl.SSLError) as error:
            log.warning("TLS files changed but do not load yet (%s); keeping the current certificate", error)
            return None
        self._stamp = stamp
        log.info("TLS certificate re-read from %s", self.files[0])
        return configuration


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> grpc.ServerCredentials:
    files = CertificateFiles(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(files.initial, files.fetch, require_client_authentication=client_ca_file is not None)
