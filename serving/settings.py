"""Gateway settings: every limit is here, with its default; each can be set as LATENTSERVE_<NAME>."""
import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


BYTES_PER_IMAGE = 4096  # a float32 28x28 image (3,136 bytes) with its latent (up to ~230 floats) and label
MESSAGE_OVERHEAD_BYTES = 4096
PREDICTION_BYTES = 32  # a PredictedLabel without its id: tags, lengths, a 10-byte varint for label -1, a float
HIT_BYTES = 32  # a search Hit without its id and metadata: tags, lengths, a float, a 10-byte varint label


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTSERVE_")

    host: str = Field("127.0.0.1", description="where the gateway listens; beyond loopback it needs TLS and tokens, or `insecure`")
    port: int = Field(50051, ge=0, le=65535, description="0: any free port")
    insecure: bool = Field(False, description="allow a non-loopback address without TLS and tokens")
    tls_cert_file: Path | None = Field(None, description="the gateway's certificate chain (PEM); with tls_key_file: TLS")
    tls_key_file: Path | None = Field(None, description="the gateway's private key (PEM)")
    tls_client_ca_file: Path | None = Field(None, description="mutual TLS: only clients with a certificate this CA signed connect")
    metrics_host: str = Field("127.0.0.1", description="where /metrics listens")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics; 0: off")
    ui_port: int = Field(0, ge=0, le=65535, description="the page to look at what the models do (serve --ui), plain HTTP on metrics_host; 0: off")
    health_port: int = Field(0, ge=0, le=65535, description="gRPC health alone, plaintext, on metrics_host, answered by its own thread under any load; 0: off")
    model_repository: Path = Path("model_repository")
    data_dir: Path = Field(Path("data"), description="where the search index lives")
    index_backend: Literal["embedded", "milvus"] = Field("embedded", description="the search collections: FAISS + SQLite in data_dir, or Milvus (milvus_uri)")
    milvus_uri: str = Field("", description="Milvus standalone or cluster (http://host:19530), or a Milvus Lite file ending .db; empty: data_dir/milvus.db")
    workers: int = Field(1, ge=1, description="gateway processes sharing the port (serve --workers); more than 1 needs a Milvus server (index_backend milvus, milvus_uri http://...)")
    runtime: Literal["embedded", "triton"] = Field("embedded", description="in-process onnxruntime, or Triton")
    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC address (runtime triton)")
    triton_calls_per_model: int = Field(2, ge=1, description="Triton calls in flight per model version for requests under batch_max_images; later ones wait and go merged in the next call")
    triton_tls_ca_file: Path | None = Field(None, description="reach Triton over TLS, trusting this CA (PEM)")
    triton_tls_cert_file: Path | None = Field(None, description="the gateway's client certificate for Triton's mutual TLS")
    triton_tls_key_file: Path | None = Field(None, description="its private key")
    health_poll_seconds: float = Field(1.0, gt=0, description="how often model readiness is re-read")
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="on SIGTERM, how long calls in flight may take to finish")
    index_model: str = Field("autoencoder", description="the encoder whose codes the search index holds")
    default_generator: str = Field("acgan", description="the model Generator calls use when they name none")
    default_classifier: str = Field("ssgan", description="the model Classify calls use when they name none")
    default_density_model: str = Field("pixelcnn", description="the model Density calls and `check_distribution` use when they name none")
    gallery: Literal["mnist-test", "none"] = Field("mnist-test", description="what a new, empty index starts with")
    max_batch_images: int = Field(256, ge=1, description="images in one Encode, AddItems or Generate request, or stream chunk")
    max_stream_images: int = Field(10_000_000, ge=1, description="images in one GenerateStream job")
    max_sequential_sampling_images: int = Field(
        64, ge=1, description="images one Generate call (or one stream chunk) samples by a loop of graph runs: pixel by pixel (784 runs) or by a Gibbs chain"
    )
    gibbs_steps: int = Field(1000, ge=1, le=100_000, description="steps of an RBM's Gibbs chain, from the latent's start to a sample")
    default_chunk_images: int = Field(256, ge=1, description="images per GenerateStream message when the request sets none")
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="gRPC send and receive limit")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="width x height of one encoded image")
    max_request_pixels: int = Field(4096 * 4096, ge=1, description="width x height of all the encoded images of one request")
    max_id_bytes: int = Field(256, ge=1, description="length of one item id")
    max_metadata_bytes_per_item: int = Field(4096, ge=0, description="one item's metadata as a message carries it (keys, values, a few bytes per entry)")
    max_metadata_bytes_per_request: int = Field(256 * 1024, ge=0, description="the metadata of all the items of one AddItems")
    max_k: int = Field(1000, ge=1, description="hits in one Search, and in all the results of one SearchBatch")
    default_page_items: int = Field(100, ge=1, description="items in a ListItems page when page_size is 0")
    max_page_items: int = Field(1000, ge=1, description="items in one ListItems page (fewer when they would not fit one message)")
    max_kept_image_bytes: int = Field(1024 * 1024, ge=1, description="an item's image, in a collection that keeps images")
    ivf_nlist: int = Field(1024, ge=1, description="IVF lists of a collection created with INDEX_KIND_IVF and nlist 0")
    ivf_nprobe: int = Field(8, ge=1, description="IVF lists searched, for a collection created with nprobe 0")
    max_ivf_nlist: int = Field(65_536, ge=1, description="IVF lists a collection may ask for")
    hnsw_m: int = Field(16, ge=2, le=64, description="HNSW neighbours per node, for a collection created with m 0")
    hnsw_ef_search: int = Field(64, ge=1, description="HNSW candidates searched, for a collection created with ef_search 0")
    max_hnsw_ef_search: int = Field(4096, ge=1, description="HNSW candidates a collection may ask for")
    max_filter_bytes: int = Field(4096, ge=1, description="length of a filter")
    max_filter_values: int = Field(1000, ge=1, description="values in one `in [...]` list of a filter")
    max_filter_depth: int = Field(32, ge=1, description="nesting of a filter's parentheses and `not`s")
    default_k: int = Field(10, ge=1)
    max_propagation_items: int = Field(100_000, ge=2, description="stored items PropagateLabels will label")
    max_propagation_classes: int = Field(100, ge=1, description="distinct classes among PropagateLabels' labels")
    propagation_chunk_items: int = Field(10_000, ge=1, description="predictions in one PropagateLabels message")
    max_graph_neighbours: int = Field(100, ge=1, description="k of the kNN graph in PropagateLabels")
    default_graph_neighbours: int = Field(10, ge=1)
    max_inflight_per_model: int = Field(64, ge=1, description="requests running or queued per model; more: RESOURCE_EXHAUSTED")
    max_inflight_images: int = Field(16_384, ge=1, description="images running or queued over all models; more: RESOURCE_EXHAUSTED")
    max_inflight_bytes: int = Field(256 * 1024 * 1024, ge=1, description="input bytes running or queued over all models; more: RESOURCE_EXHAUSTED")
    max_concurrent_calls: int = Field(
        64, ge=1, description="latentserve.v1 calls running at once, streams included; more are refused (RESOURCE_EXHAUSTED) before their request is read"
    )
    inference_niceness: int = Field(
        10, ge=0, le=19, description="nice value of the embedded runtime's inference threads: under overload the event loop, which answers and refuses calls, runs first"
    )
    intra_op_threads: int = Field(1, ge=1, description="onnxruntime threads per inference")
    inference_workers: int = Field(2, ge=1, description="inferences running at once (embedded runtime)")
    batch_max_images: int = Field(64, ge=1, description="images in one merged run (embedded runtime) or Triton call (triton runtime) of queued requests; a request this large goes alone")
    batch_max_delay_ms: float = Field(0, ge=0, description="how long a free worker waits for more requests to merge (embedded runtime); 0: only those already queued")
    inline_max_ms: float = Field(
        0.5, ge=0, description="a request the model's recent runs say takes at most this long runs on the event loop, without queue or executor hop (embedded runtime); 0: never"
    )
    tracing: bool = Field(False, description="OpenTelemetry spans for every call to our services, continuing the client's W3C trace context and passing it to Triton")
    tracing_otlp_endpoint: str = Field("", description="with tracing: the OTLP/gRPC collector spans go to (http://collector:4317); empty: none")
    tracing_service_name: str = Field("latentserve", description="service.name of the spans")
    reflection: bool = Field(True, description="serve gRPC server reflection (grpcurl list)")
    tokens_file: Path | None = Field(None, description="bearer tokens (`latentserve token`); unset: no authentication, no quotas")
    quota_read_requests_per_second: float = Field(100, ge=0, description="per token, calls of scope read; 0: unlimited")
    quota_write_requests_per_second: float = Field(10, ge=0, description="per token, calls of scope write or admin; 0: unlimited")
    quota_images_per_second: float = Field(1000, ge=0, description="per token, images sent, generated or added; 0: unlimited")

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @model_validator(mode="after")
    def _beyond_loopback_only_with_tls_and_tokens(self) -> "Settings":
        if not (_loopback(self.host) or self.insecure or (self.tls and self.tokens_file)):
            raise ValueError(
                f"listening on {self.host!r}, beyond loopback, needs TLS (tls_cert_file, tls_key_file) and tokens "
                "(tokens_file); set insecure (`serve --insecure`) to serve anyone who reaches the port, in the clear"
            )
        return self

    @model_validator(mode="after")
    def _workers_share_a_port_and_a_milvus_server(self) -> "Settings":
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers share one port: set port (0 would give each worker its own)")
        ranges = [range(start, start + self.workers) for start in (self.metrics_port, self.health_port, self.ui_port) if start]
        taken = [port for ports in ranges for port in ports] + [self.port]
        if self.workers > 1 and len(set(taken)) < len(taken):
            raise ValueError(f"worker i serves /metrics, health and the page on metrics_port, health_port and ui_port + i: with {self.workers} workers these overlap each other or port")
        if self.workers > 1 and (self.index_backend != "milvus" or not self.milvus_uri or self.milvus_uri.endswith(".db")):
            raise ValueError(
                "workers share their collections through a Milvus server: set index_backend milvus and milvus_uri "
                "http://HOST:19530 (a FAISS index or a Milvus Lite file belongs to one process)"
            )
        return self

    @model_validator(mode="after")
    def _milvus_can_hold_the_ids(self) -> "Settings":
        if not self.milvus_uri:
            self.milvus_uri = str(self.data_dir / "milvus.db")
        if self.index_backend == "milvus" and self.max_id_bytes > 65_535:
            raise ValueError("max_id_bytes over 65535, the most a Milvus VARCHAR holds")
        if self.milvus_uri.endswith(".db") and not re.fullmatch(r"[A-Za-z0-9._-]{1,36}", Path(self.milvus_uri).name):
            raise ValueError("a Milvus Lite file's name is 1 to 36 letters, digits, '.', '_' or '-' (milvus_lite's rule)")
        return self

    @model_validator(mode="after")
    def _ui_port_is_its_own(self) -> "Settings":
        if self.ui_port and self.ui_port in (self.port, self.metrics_port, self.health_port):
            raise ValueError(f"ui_port {self.ui_port} is taken by port, metrics_port or health_port")
        return self

    @model_validator(mode="after")
    def _health_port_is_its_own(self) -> "Settings":
        if self.health_port and self.health_port in (self.port, self.metrics_port):
            raise ValueError(f"health_port {self.health_port} is taken by port or metrics_port")
        return self

    @model_validator(mode="after")
    def _a_full_batch_can_be_admitted(self) -> "Settings":
        if self.max_inflight_images < self.max_batch_images:
            raise ValueError("max_inflight_images below max_batch_images would refuse a full batch forever")
        return self

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> "Settings":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set tls_cert_file and tls_key_file together")
        if self.tls_client_ca_file and not self.tls:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if (self.triton_tls_cert_file is None) != (self.triton_tls_key_file is None):
            raise ValueError("set triton_tls_cert_file and triton_tls_key_file together")
        return self

    @model_validator(mode="after")
    def _batches_fit_in_a_message(self) -> "Settings":
        """A full batch of float32 images (a Generate response, a stream chunk), a full chunk of
        PropagateLabels predictions with the longest ids and a Search of max_k hits with the longest ids and
        the most metadata must each fit in one message."""
        for name, needed in [
            ("max_batch_images", self.max_batch_images * BYTES_PER_IMAGE + MESSAGE_OVERHEAD_BYTES),
            ("propagation_chunk_items", self.propagation_chunk_items * (self.max_id_bytes + PREDICTION_BYTES) + MESSAGE_OVERHEAD_BYTES),
            ("max_k", self.max_k * (self.max_id_bytes + self.max_metadata_bytes_per_item + HIT_BYTES) + MESSAGE_OVERHEAD_BYTES),
        ]:
            if needed > self.max_message_bytes:
                raise ValueError(f"{name} {getattr(self, name)} needs max_message_bytes >= {needed}")
        return self
