"""`latentserve triton`: the real tritonserver binary from the nvidia-pytriton wheel, over our repository.

The wheel carries Triton 2.51 with only the Python backend; every model's `model.py` runs onnxruntime.
Recipe (see ../shared/DESIGN.md): a private copy of the backends directory with the backend stub for the
running Python, LD_LIBRARY_PATH with Python's LIBDIR first (else the stub loads the system libpython),
loopback addresses on free or given ports, explicit model control, and a unique shared-memory prefix so
that a stop can remove exactly this server's /dev/shm regions.
"""
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

log = logging.getLogger(__name__)
SHM = Path("/dev/shm")


class TritonStartError(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: every probe stays bound until all are chosen, so the kernel
    cannot hand out one port twice (it did once in CI: gRPC and metrics on the same port)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_port_run(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free now (for `serve --workers`, whose
    worker i takes a base port + i)."""
    while True:
        first, = free_ports(1)
        probes = [socket.socket() for _ in range(count)]
        try:
            for port, probe in zip(range(first, first + count), probes):
                probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()


def _wheel_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")  # locate without importing pytriton's Python API
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError("nvidia-pytriton is not installed: pip install -c constraints.txt '.[triton]'")
    return Path(spec.submodule_search_locations[0]) / "tritonserver"


class TritonServer:
    def __init__(self, repository: Path, grpc_port: int = 0, http_port: int = 0, metrics_port: int = 0,
                 model_config_name: str | None = None, log_file: Path | None = None,
                 grpc_tls: tuple[Path, Path] | None = None):
        """`grpc_tls` (certificate chain, key): Triton's gRPC endpoint speaks only TLS."""
        self.repository = Path(repository).resolve()
        self.grpc_tls = grpc_tls
        spare_ports = iter(free_ports([grpc_port, http_port, metrics_port].count(0)))
        self.grpc_port = grpc_port or next(spare_ports)
        self.http_port = http_port or next(spare_ports)
        self.metrics_port = metrics_port or next(spare_ports)
        self.model_config_name = model_config_name
        self.shm_prefix = f"latentserve_{uuid.uuid4().hex[:12]}_"
        self._workdir = Path(tempfile.mkdtemp(prefix="latentserve-triton-"))
        self.log_file = log_file or self._workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _prepare_backends(self) -> None:
        wheel = _wheel_dir()
        backends = self._workdir / "backends"
        shutil.copytree(wheel / "backends", backends)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(wheel / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python")

    def _environment(self) -> dict[str, str]:
        wheel_libs = _wheel_dir().parents[1] / "nvidia_pytriton.libs"
        environment = dict(os.environ)
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (sysconfig.get_config_var("LIBDIR"), str(wheel_libs), os.environ.get("LD_LIBRARY_PATH")) if p
        )
        environment["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
        return environment

    def command(self) -> list[str]:
        command = [
            str(_wheel_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._workdir / 'backends'}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--model-control-mode=explicit", "--load-model=*",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.model_config_name:
            command.append(f"--model-config-name={self.model_config_name}")
        if self.grpc_tls:
            cert, key = self.grpc_tls
            command += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(cert).resolve()}", f"--grpc-server-key={Path(key).resolve()}"]
        return command

    def start(self, timeout: float = 180) -> "TritonServer":
        self._prepare_backends()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as log_output:
            self.process = subprocess.Popen(
                self.command(), stdout=log_output, stderr=subprocess.STDOUT, env=self._environment(),
                start_new_session=True,  # our signals reach it only through stop()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"tritonserver exited with {self.process.returncode}:\n{self.failure_lines()}"
                self.stop()
                raise TritonStartError(message)
            if self.ready():
                log.info("tritonserver ready: grpc %s, http %s", self.grpc_url, self.http_url)
                return self
            time.sleep(0.25)
        message = f"tritonserver not ready after {timeout:.0f} s:\n{self.failure_lines()}"
        self.stop()
        raise TritonStartError(message)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def failure_lines(self, limit: int = 40) -> str:
        """The log lines that say what went wrong (errors and failed model loads), else the log's tail."""
        lines = self.log_file.read_text(errors="replace").splitlines() if self.log_file.exists() else []
        noise = ("CudaDriverHelper", "NVML", "GPU")  # harmless on a CPU machine
        errors = [
            line for line in lines
            if (line.startswith("E") or "failed to load" in line or "Error" in line) and not any(n in line for n in noise)
        ]
        return "\n".join((errors or lines)[-limit:])

    def stop(self, timeout: float = 30) -> None:
        """SIGINT (Triton's graceful stop), then SIGKILL if needed; always removes our /dev/shm regions and
        the private backends directory (and the log, unless it was given)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for region in SHM.glob(f"*{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_until_signalled(server: TritonServer) -> None:
    """Start, print where it listens, and stop cleanly on SIGINT or SIGTERM."""
    stopping = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.append(True))
    server.start()
    print(f"tritonserver ready: grpc {server.grpc_url}, http {server.http_url}, metrics {server.metrics_url}", flush=True)
    try:
        while not stopping and server.process.poll() is None:
            time.sleep(0.2)
        if not stopping:
            raise TritonStartError(f"tritonserver exited with {server.process.returncode}:\n{server.failure_lines()}")
    finally:
        server.stop()
