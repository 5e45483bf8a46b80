"""The gateway process: a grpc.aio server with health, reflection and metrics, built from one list of
capabilities.

The server answers from the moment it starts; each service's health is NOT_SERVING until what it needs is
loaded (the runtime's models, then the search index), and calls made before then get UNAVAILABLE.
"""
import asyncio
import importlib
import logging
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Gauge, start_http_server

from serving import tracing
from serving.auth import Guard
from serving.browser import UiServer
from serving.capability import Capability, Inference
from serving.classification import Classification
from serving.density import DensityScoring
from serving.encoding import Encoding
from serving.generation import Generation
from serving.index import IndexLocked
from serving.interceptors import ErrorsAndMetrics
from serving.models import Models
from serving.open_inference import OpenInference
from serving.runtime import InflightLimit
from serving.runtime.embedded import EmbeddedRuntime
from serving.runtime.triton import TritonRuntime
from serving.search import Search
from serving.settings import Settings
from serving.tls import server_credentials
from serving.translation import Translation

log = logging.getLogger(__name__)

INDEX_ITEMS = Gauge("latentserve_index_items", "items in the search index")
INFLIGHT = Gauge("latentserve_inflight_requests", "inference requests running or queued in the gateway")


def capabilities(settings: Settings, inference: Inference) -> list[Capability]:
    """Everything the gateway serves, in the order health and reflection list it."""
    encoding, density = Encoding(settings, inference), DensityScoring(settings, inference)
    return [
        Models(settings, inference),
        encoding,
        Search(settings, inference, encoding),
        Generation(settings, inference),
        Classification(settings, inference, density),
        Translation(settings, inference, density),
        density,
        OpenInference(settings, inference),
    ]


def add_servicer(servicer, server: grpc.aio.Server) -> str:
    """Add `servicer` to `server` through the add_<Service>Servicer_to_server function protoc generated beside
    its base class; returns the service's full name (for health and reflection)."""
    generated = next(cls for cls in type(servicer).__mro__ if cls.__module__.endswith("_pb2_grpc"))
    getattr(importlib.import_module(generated.__module__), f"add_{generated.__name__}_to_server")(servicer, server)
    messages = importlib.import_module(generated.__module__.removesuffix("_grpc"))
    return messages.DESCRIPTOR.services_by_name[generated.__name__.removesuffix("Servicer")].full_name


def _health_side(settings: Settings) -> tuple[grpc.Server, health.HealthServicer] | None:
    """With `health_port`: gRPC health alone on a second, plaintext port, served by a thread of its own,
    so it answers while the event loop is saturated (the main port's health waits its turn there)."""
    if not settings.health_port:
        return None
    servicer = health.HealthServicer()
    server = grpc.server(ThreadPoolExecutor(1, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"{settings.metrics_host}:{settings.health_port}")
    server.start()
    return server, servicer


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.inference = Inference(InflightLimit(settings.max_inflight_per_model, settings.max_inflight_images, settings.max_inflight_bytes))
        self.capabilities = capabilities(settings, self.inference)
        self.health = health.aio.HealthServicer()
        self.health_side = _health_side(settings)
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        if settings.port == 0:
            # A port of its own: with grpc's default SO_REUSEPORT the kernel may hand an automatically chosen
            # port to two servers at once, and clients reach the wrong one (grpc/grpc#10755). Workers sharing
            # a fixed port keep the option.
            options.append(("grpc.so_reuseport", 0))
        self.interceptor = ErrorsAndMetrics(Guard(settings), settings.max_concurrent_calls)
        # the span outermost: it is current while our interceptor and the servicers run, and sees their statuses
        interceptors = [tracing.server_interceptor(settings), self.interceptor] if settings.tracing else [self.interceptor]
        self.grpc = grpc.aio.server(interceptors=interceptors, options=options)
        self.services = {add_servicer(capability.servicer(), self.grpc): capability for capability in self.capabilities}
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        if settings.reflection:
            reflection.enable_server_reflection(
                (*self.services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.grpc
            )
        address = f"{settings.host}:{settings.port}"
        if settings.tls:
            self.port = self.grpc.add_secure_port(address, server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file))
        else:
            self.port = self.grpc.add_insecure_port(address)
        self.loaded: asyncio.Task | None = None
        self.watch: asyncio.Task | None = None
        self.metrics = None  # (HTTP server, thread) of /metrics
        self.ui: UiServer | None = None  # the page (ui_port)
        # The page reaches the gateway on a Unix socket in a directory only this user can enter: plaintext
        # beside a TLS port, still through the interceptor (its tokens, scopes and quotas)
        self.ui_socket = Path(tempfile.mkdtemp(prefix="latentserve-ui-")) / "gateway.sock" if settings.ui_port else None
        if self.ui_socket:
            self.grpc.add_insecure_port(f"unix:{self.ui_socket}")
        INFLIGHT.set_function(self.inference.inflight.total)

    def capability(self, kind: type[Capability]) -> Capability:
        return next(c for c in self.capabilities if isinstance(c, kind))

    async def start(self) -> None:
        for service in ("", *self.services):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
            if self.health_side:
                self.health_side[1].set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        if self.settings.metrics_port:
            self.metrics = start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host)
        if self.ui_socket:
            self.ui = UiServer(self.settings.metrics_host, self.settings.ui_port, f"unix:{self.ui_socket}").start()
            log.info("the page: http://%s:%d/", self.settings.metrics_host, self.ui.port)
        log.info("listening on %s:%d (%s)", self.settings.host, self.port, "mutual TLS" if self.settings.tls_client_ca_file else "TLS" if self.settings.tls else "plaintext")
        self.loaded = asyncio.create_task(self._load())

    async def _runtime(self):
        settings = self.settings
        if settings.runtime == "triton":
            return TritonRuntime(  # its aio client needs this loop
                settings.triton_url, settings.model_repository,
                settings.triton_tls_ca_file, settings.triton_tls_cert_file, settings.triton_tls_key_file,
                settings.triton_calls_per_model, settings.batch_max_images,
            )
        return await asyncio.to_thread(
            EmbeddedRuntime, settings.model_repository, settings.intra_op_threads, settings.inference_workers, settings.inference_niceness,
            settings.batch_max_images, settings.batch_max_delay_ms, settings.inline_max_ms,
        )

    async def _load(self) -> None:
        """The runtime, then each capability's own state (the search index), with health kept current."""
        try:
            self.inference.runtime = await self._runtime()
            await self._update_health()
            self.watch = asyncio.create_task(self._watch())
            await asyncio.gather(*(capability.open() for capability in self.capabilities))
            INDEX_ITEMS.set_function(lambda: len(self.capability(Search).index))
            await self._update_health()
        except IndexLocked:
            raise  # `serve` stops on it: another gateway owns the data directory
        except Exception:
            log.exception("loading failed; the affected services stay NOT_SERVING")
            raise

    async def _update_health(self) -> None:
        """Each service is SERVING while what it needs is ready (the capability says what); "" while all are."""
        await self.inference.runtime.refresh()
        serving = {service: capability.ready() for service, capability in self.services.items()}
        serving[""] = all(serving.values())
        for service, up in serving.items():
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(service, status)
            if self.health_side:
                self.health_side[1].set(service, status)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_poll_seconds)
            try:
                await self._update_health()
            except Exception:
                log.exception("health update failed")

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, then no new calls; the calls in flight get `grace` seconds (None: cancelled
        now); then the index and the runtime close."""
        await self.health.enter_graceful_shutdown()
        if self.health_side:
            self.health_side[1].enter_graceful_shutdown()
        await self.grpc.stop(grace)
        if self.metrics:
            self.metrics[0].shutdown()
        if self.ui:
            self.ui.stop()
        if self.ui_socket:
            shutil.rmtree(self.ui_socket.parent, ignore_errors=True)
        if self.health_side:
            self.health_side[0].stop(None)
        for task in (self.loaded, self.watch):
            if task and not task.done():
                task.cancel()
        for capability in self.capabilities:
            await capability.close()
        if self.inference.loaded:
            await self.inference.runtime.close()
        if self.settings.tracing:
            tracing.flush()


async def serve(settings: Settings, ready=None) -> None:
    """Serve until SIGINT or SIGTERM; `ready` (an Event, as `serve --workers` passes) is set once everything
    has loaded. Raises IndexLocked, after stopping, when another process holds the data directory; other
    loading failures leave their services NOT_SERVING (and say so in the log)."""
    server = Server(settings)
    await server.start()
    if ready is not None:
        server.loaded.add_done_callback(lambda loaded: loaded.cancelled() or loaded.exception() or ready.set())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    signalled = asyncio.create_task(stopping.wait())
    await asyncio.wait({signalled, server.loaded}, return_when=asyncio.FIRST_COMPLETED)
    failure = server.loaded.exception() if server.loaded.done() else None
    if not isinstance(failure, IndexLocked):
        await signalled
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(server.grpc.stop(None)))
    grace = settings.shutdown_grace_seconds
    log.info("stopping: health NOT_SERVING, new calls refused, %g s for the calls in flight (a second signal: now)", grace)
    await server.stop(grace)
    log.info("stopped")
    if isinstance(failure, IndexLocked):
        raise failure
