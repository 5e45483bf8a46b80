"""The gateway process: a grpc.aio server with health, reflection and metrics.

The server answers from the moment it starts; each service's health is NOT_SERVING until what it needs is
loaded (the runtime's models, then the search index), and calls made before then get UNAVAILABLE.
"""
import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Gauge, start_http_server

from latentserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    translator_pb2,
    translator_pb2_grpc,
)
from serving import classification, encoding, generation, translation
from serving.classification import Classification
from serving.encoding import Encoding
from serving.generation import Generation
from serving.interceptors import ErrorsAndMetrics
from serving.errors import NotFound
from serving.runtime import InflightLimit, encoder_entry
from serving.runtime.embedded import EmbeddedRuntime
from serving.runtime.triton import TritonRuntime
from serving.search import Search
from serving.servicers import (
    ClassifierServicer,
    EncoderServicer,
    Gateway,
    GeneratorServicer,
    ModelsServicer,
    SearchServicer,
    TranslatorServicer,
)
from serving.settings import Settings
from serving.translation import Translation

log = logging.getLogger(__name__)

MODELS = models_pb2.DESCRIPTOR.services_by_name["Models"].full_name
ENCODER = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name
SEARCH = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
GENERATOR = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name
CLASSIFIER = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
TRANSLATOR = translator_pb2.DESCRIPTOR.services_by_name["Translator"].full_name
SERVICES = (MODELS, ENCODER, SEARCH, GENERATOR, CLASSIFIER, TRANSLATOR)
INDEX_ITEMS = Gauge("latentserve_index_items", "items in the search index")
INFLIGHT = Gauge("latentserve_inflight_requests", "inference requests running or queued in the gateway")


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.gateway = Gateway(settings)
        self.health = health.aio.HealthServicer()
        limits = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        self.grpc = grpc.aio.server(interceptors=[ErrorsAndMetrics()], options=limits)
        models_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(self.gateway), self.grpc)
        encoder_pb2_grpc.add_EncoderServicer_to_server(EncoderServicer(self.gateway), self.grpc)
        search_pb2_grpc.add_SearchServicer_to_server(SearchServicer(self.gateway), self.grpc)
        generator_pb2_grpc.add_GeneratorServicer_to_server(GeneratorServicer(self.gateway), self.grpc)
        classifier_pb2_grpc.add_ClassifierServicer_to_server(ClassifierServicer(self.gateway), self.grpc)
        translator_pb2_grpc.add_TranslatorServicer_to_server(TranslatorServicer(self.gateway), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc,
        )
        self.port = self.grpc.add_insecure_port(f"{settings.host}:{settings.port}")
        self.loaded: asyncio.Task | None = None
        self.watch: asyncio.Task | None = None
        self.metrics = None  # (HTTP server, thread) of /metrics

    async def start(self) -> None:
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        if self.settings.metrics_port:
            self.metrics = start_http_server(self.settings.metrics_port, addr=self.settings.host)
        log.info("listening on %s:%d", self.settings.host, self.port)
        self.loaded = asyncio.create_task(self._load())

    async def _runtime(self):
        settings = self.settings
        if settings.runtime == "triton":
            return TritonRuntime(settings.triton_url, settings.model_repository)  # its aio client needs this loop
        return await asyncio.to_thread(
            EmbeddedRuntime, settings.model_repository, settings.intra_op_threads, settings.inference_workers
        )

    async def _load(self) -> None:
        settings, gateway = self.settings, self.gateway
        try:
            gateway.runtime = await self._runtime()
            inflight = InflightLimit(settings.max_inflight_per_model)
            gateway.encoding = Encoding(gateway.runtime, inflight)
            gateway.generation = Generation(gateway.runtime, inflight)
            gateway.classification = Classification(gateway.runtime, inflight)
            gateway.translation = Translation(gateway.runtime, inflight)
            INFLIGHT.set_function(inflight.total)
            await self._update_health()
            if encoder_entry(gateway.runtime, settings.index_model) is None:
                raise NotFound(f"no encoder {settings.index_model!r} in {settings.model_repository}", "index_model")
            while not encoder_entry(gateway.runtime, settings.index_model).versions:
                log.info("waiting for %s to be ready", settings.index_model)
                await asyncio.sleep(settings.health_poll_seconds)
                await self._update_health()
            gateway.search = await Search.open(
                settings.data_dir / "index", gateway.encoding, settings.index_model, settings.gallery
            )
            INDEX_ITEMS.set_function(lambda: len(gateway.search.index))
            await self._update_health()
            log.info("ready: %d items in the index", len(gateway.search.index))
        except Exception:
            log.exception("loading failed; the affected services stay NOT_SERVING")
            raise
        self.watch = asyncio.create_task(self._watch())

    async def _update_health(self) -> None:
        """Each service is SERVING while what it needs is ready: the index model, the index's version, the
        default generator, the default classifier, any translator (translators have no default)."""
        runtime, search = self.gateway.runtime, self.gateway.search
        await runtime.refresh()

        def ready(model: str, capability: str) -> bool:
            entry = next((e for e in runtime.entries().values() if e.model == model and e.capability == capability), None)
            return entry is not None and bool(entry.versions)

        serving = {
            MODELS: True,
            ENCODER: ready(self.settings.index_model, encoding.CAPABILITY),
            SEARCH: search is not None and search.ready(),
            GENERATOR: ready(self.settings.default_generator, generation.CAPABILITY),
            CLASSIFIER: ready(self.settings.default_classifier, classification.CAPABILITY),
            TRANSLATOR: any(e.capability == translation.CAPABILITY and e.versions for e in runtime.entries().values()),
        }
        serving[""] = all(serving.values())
        for service, up in serving.items():
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(service, status)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_poll_seconds)
            try:
                await self._update_health()
            except Exception:
                log.exception("health update failed")

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)
        if self.metrics:
            self.metrics[0].shutdown()
        for task in (self.loaded, self.watch):
            if task and not task.done():
                task.cancel()
        if self.gateway.search:
            await asyncio.to_thread(self.gateway.search.index.close)
        if self.gateway.runtime:
            await self.gateway.runtime.close()


async def serve(settings: Settings) -> None:
    server = Server(settings)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await server.stop()
