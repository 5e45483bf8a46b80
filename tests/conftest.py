import asyncio
import logging
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from latentserve import repository
from latentserve.v1 import common_pb2
from latentserve.datasets import Mnist, Split, load_mnist
from serving.server import Server
from serving import tokens
from serving.settings import Settings
from serving.triton_server import free_ports

ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = ROOT / "model_repository"


class Records(logging.Handler):
    """Every log record of the process, formatted with its traceback if it has one."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_token_in_any_log_record():
    """Every token made in this process during the suite (serving.tokens.create) is looked for in every log
    record of the project's loggers, at DEBUG, at the end of the suite."""
    made, create = [], tokens.create

    def recording(*args, **kwargs) -> str:
        made.append(create(*args, **kwargs))
        return made[-1]

    handler, loggers = Records(), [logging.getLogger(name) for name in ("serving", "latentserve", "benchmarks")]
    levels = [logger.level for logger in loggers]
    tokens.create = recording
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield
    tokens.create = create
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)
    leaked = sum(any(token in line for line in handler.lines) for token in made)
    assert not leaked, f"{leaked} of {len(made)} tokens appear in log records"


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture(scope="session")
def small_mnist(mnist) -> Mnist:
    """Few training images, the whole test split (the retrieval protocol needs 100 queries per class)."""
    return replace(
        mnist,
        train=Split(mnist.train.images[:512], mnist.train.labels[:512]),
        valid=Split(mnist.valid.images[:256], mnist.valid.labels[:256]),
    )


def repository_with(root: Path, run_dir: Path, data: Mnist, model: str, config: dict, shipped: tuple[str, ...]) -> Path:
    """A model repository at `root`: `model` trained here with `config` and exported, beside copies of
    the `shipped` entries (what the gateway needs to open: the index's encoder, at least)."""
    from export.exporter import export_checkpoint  # torch: only the tests that train import it
    from training.train import train

    export_checkpoint(train(model, run_dir, data, config, threads=1), root, data)
    for name in shipped:
        shutil.copytree(MODEL_REPOSITORY / name, root / name)
    return root


def onnx_session(entry: repository.Entry) -> onnxruntime.InferenceSession:
    """The newest version of `entry`'s ONNX graph, on one thread like the gateway's tests."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    path = entry.version_path(entry.versions[0]) / repository.ONNX_FILE
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def replay_gibbs_chain(session: onnxruntime.InferenceSession, latents: np.ndarray, seed: int, steps: int, hidden: int) -> np.ndarray:
    """An RBM's Gibbs chains as the gateway runs them (serving/generation.py), replayed on a `gibbs` graph:
    start where the latent is negative, then per step the graph on draws 2t, pixels from draws 2t + 1
    of samples 0.. of `seed`. The last step's pixel probabilities, (n, 1, 28, 28)."""
    from latentserve.latents import sample_uniforms

    count = len(latents)
    image = (latents < 0).astype(np.float32).reshape(count, 1, 28, 28)
    for step in range(steps):
        (probabilities,) = session.run(["next_probabilities"], {"image": image, "hidden_uniforms": sample_uniforms(seed, 0, count, hidden, 2 * step)})
        image = (sample_uniforms(seed, 0, count, 784, 2 * step + 1).reshape(image.shape) < probabilities).astype(np.float32)
    return probabilities


def tensor_batch(images: np.ndarray) -> common_pb2.Images:
    """Images as one float32 tensor message (the fast path)."""
    images = np.ascontiguousarray(images, np.float32)
    return common_pb2.Images(tensor=common_pb2.Tensor(shape=images.shape, dtype=common_pb2.DATA_TYPE_FLOAT32, data=images.tobytes()))


def assert_refused(error: grpc.RpcError, code: grpc.StatusCode, field: str) -> None:
    """`error` has `code` and a message that starts with the field it names; an INVALID_ARGUMENT also
    names the field in its BadRequest details."""
    assert error.code() == code, error.details()
    assert error.details().startswith(field + ":"), error.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        detail = error_details_pb2.BadRequest()
        rpc_status.from_call(error).details[0].Unpack(detail)
        assert detail.field_violations[0].field == field


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class RunningGateway:
    """The real gateway on 127.0.0.1 and a free port, in a thread with its own event loop."""

    def __init__(self, **overrides):
        defaults = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "model_repository": MODEL_REPOSITORY}
        self.settings = Settings(**{**defaults, **overrides})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Server | None = None

    def _run(self, coroutine, timeout=120):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> Server:
        server = Server(self.settings)
        await server.start()
        return server

    async def _loaded(self) -> None:
        await self.server.loaded

    def start(self, wait: bool = True) -> "RunningGateway":
        self.thread.start()
        self.server = self._run(self._start())
        if wait:
            self._run(self._loaded())
        return self

    def wait_loaded(self) -> None:
        self._run(self._loaded())

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stop(self) -> None:
        self._run(self.server.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def milvus_server(tmp_path):
    """Milvus Lite serving on a loopback TCP port, which pymilvus reaches as it reaches Milvus standalone
    (an http:// URI, none of the Lite-only paths)."""
    from milvus_lite.server import Server  # the milvus extra

    (port,) = free_ports(1)
    server = Server(str(tmp_path / "served.db"), address=f"127.0.0.1:{port}")
    assert server.init() and server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def start_gateway():
    """Start gateways with `start_gateway(**settings)`; every one is stopped when the test ends."""
    started = []

    def start(wait: bool = True, **overrides) -> RunningGateway:
        gateway = RunningGateway(**overrides)
        started.append(gateway)
        return gateway.start(wait)

    yield start
    for gateway in started:
        if gateway.thread.is_alive():
            gateway.stop()
