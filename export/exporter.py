"""Checkpoint -> new numeric version of each of the model's graphs in the model repository.

Each version holds model.onnx (dynamic batch axis), model.pt (TorchScript), model.py (Triton Python
backend) and card.json, which records the sha256 of the other three. It is written to a staging directory
beside the versions and renamed into place, so a half-written version is never seen. Parity against
PyTorch on real and random images must hold within the tolerances below, or the export fails and nothing
is written.
"""
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from google.protobuf import text_format
import tritonclient.grpc
from tritonclient.grpc import model_config_pb2

from latentserve import repository
from latentserve.contract import HIDDEN_UNIFORMS, IMAGE, LABEL, LATENT, TensorSpec
from latentserve.datasets import Mnist
from latentserve.files import write_atomically
from training.base import Graph
from training.train import load_checkpoint, load_model

FLOAT_TOLERANCE = 1e-4  # max |onnx - torch| / max(1, |torch|) over float outputs, likewise TorchScript: absolute
# for values up to 1 (images, probabilities), relative beyond (a log-likelihood sums 784 terms)
BIT_TOLERANCE = 1e-3  # fraction of integer (bit) outputs allowed to differ: units within float error of 0
PARITY_IMAGES = 256
MAX_BATCH_SIZE = 256
VERSIONS_KEPT_LOADED = 2
QUEUE_DELAY_MICROSECONDS = 500  # how long Triton's dynamic batcher waits to fill a batch
# No `default_queue_policy { max_queue_size }`: with any queue policy, Triton 2.51's batcher left batches
# pending for ~0.5 s (p99 517 ms, a third of the throughput; docs/benchmarks.md). The gateway bounds the
# queue instead (setting max_inflight_per_model).
WARMUP_BATCH_SIZE = 8
TRITON_MODEL_SOURCE = Path(__file__).with_name("triton_model.py")


class ParityError(RuntimeError):
    pass


def export_checkpoint(checkpoint_path: Path, repository_root: Path, data: Mnist) -> list[Path]:
    """Write one new version (the same number for every graph of the model); returns the version dirs."""
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint["data_sha256"] != data.sha256:
        raise ValueError(f"{checkpoint_path} was trained on data {checkpoint['data_sha256']}, not {data.sha256}")
    model = load_model(checkpoint)
    graphs = {f"{checkpoint['model']}_{name}": (name, graph) for name, graph in model.graphs().items()}
    for _, graph in graphs.values():
        graph.module.eval()
    for entry_name, (_, graph) in graphs.items():
        _check_signature_unchanged(repository_root / entry_name, entry_name, graph)
    metrics = model.evaluate(data)
    version = 1 + max(
        (max(repository.available_versions(repository_root / e), default=0) for e in graphs if (repository_root / e).is_dir()),
        default=0,
    )
    written = []
    for entry_name, (graph_name, graph) in graphs.items():
        entry_path = repository_root / entry_name
        (entry_path / "configs").mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=entry_path, prefix=".staging-"))
        try:
            examples = _parity_inputs(graph, data)
            _write_graph(graph, staging, examples["real"])
            parity = {kind: _parity(graph, staging, inputs) for kind, inputs in examples.items()}
            shutil.copyfile(TRITON_MODEL_SOURCE, staging / "model.py")
            card = {
                "model": checkpoint["model"],
                "graph": graph_name,
                "version": version,
                "config": checkpoint["config"],
                "training": {"epochs": checkpoint["epoch"], "steps": checkpoint["step"], "history": checkpoint["history"]},
                "data": {"source": data.source, "sha256": data.sha256},
                "metrics": metrics,
                "parity": {"float_tolerance": FLOAT_TOLERANCE, "bit_tolerance": BIT_TOLERANCE, **parity},
                "source_commit": _source_commit(),
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "files": repository.checksums(staging),  # a version whose files differ is not served
            }
            (staging / repository.CARD_FILE).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")  # strict JSON
            write_atomically(entry_path / repository.CONFIG_FILE, _config_text(entry_name, checkpoint["model"], graph_name, graph, native=False))
            write_atomically(entry_path / repository.NATIVE_CONFIG_FILE, _config_text(entry_name, checkpoint["model"], graph_name, graph, native=True))
            os.chmod(staging, 0o755)
            os.rename(staging, entry_path / str(version))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written.append(entry_path / str(version))
    return written


def load_into_triton(url: str, entry_names: list[str]) -> None:
    """Explicit model control: (re)load the entries so Triton picks up new versions. Triton keeps serving
    the versions it has if a new one fails to load; the failure is raised here with Triton's reason."""
    client = tritonclient.grpc.InferenceServerClient(url)
    for name in entry_names:
        client.load_model(name)


def _parity_inputs(graph: Graph, data: Mnist) -> dict[str, dict[str, np.ndarray]]:
    """Inputs for the parity check, by input name: "real" ones like those served (test images, standard
    normal latents, every class, uniforms), and "random" ones off that distribution (uniform noise images,
    latents three times wider, shuffled classes, uniforms again)."""
    rng = np.random.default_rng(0)
    real, random = {}, {}
    for spec in graph.inputs:
        shape = (PARITY_IMAGES, *spec.dims)
        if spec.name == IMAGE:
            real[spec.name] = data.test.images[:PARITY_IMAGES, None]
            random[spec.name] = rng.random(shape, dtype=np.float32)
        elif spec.name == LATENT:
            real[spec.name] = rng.standard_normal(shape, dtype=np.float32)
            random[spec.name] = 3 * rng.standard_normal(shape, dtype=np.float32)
        elif spec.name == LABEL:
            real[spec.name] = (np.arange(PARITY_IMAGES) % graph.classes).reshape(shape)
            random[spec.name] = rng.permutation(real[spec.name])
        elif spec.name == HIDDEN_UNIFORMS:
            real[spec.name], random[spec.name] = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
        else:
            raise ValueError(f"no parity inputs for an input named {spec.name!r}")
    return {"real": real, "random": random}


def _write_graph(graph: Graph, directory: Path, examples: dict[str, np.ndarray]) -> None:
    sample = tuple(torch.from_numpy(examples[spec.name][:2]) for spec in graph.inputs)
    batch = torch.export.Dim("batch")
    # by tensor rather than by argument name: a graph's module may take its inputs as *inputs (ExportGraph)
    batch_axes = torch.export.ShapesCollection()
    for tensor in sample:
        batch_axes[tensor] = {0: batch}
    torch.onnx.export(
        graph.module,
        sample,
        directory / repository.ONNX_FILE,
        input_names=[t.name for t in graph.inputs],
        output_names=[t.name for t in graph.outputs],
        dynamic_shapes=batch_axes.dynamic_shapes(graph.module, sample),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    _strip_stack_traces(directory / repository.ONNX_FILE)
    with torch.no_grad():
        # frozen: the weights the graph uses become constants and the rest of the model (a decoder, a
        # pretraining stack) is left out, as the ONNX file leaves it out
        torch.jit.freeze(torch.jit.trace(graph.module, sample)).save(directory / repository.TORCHSCRIPT_FILE)
    _strip_debug_records(directory / repository.TORCHSCRIPT_FILE)


def _strip_stack_traces(path: Path) -> None:
    """The dynamo exporter records each node's Python stack (with this machine's paths); drop it."""
    model = onnx.load(path)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, path)


def _strip_debug_records(path: Path) -> None:
    """TorchScript keeps traced source locations (this machine's paths) in optional *.debug_pkl records."""
    stripped = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(stripped, "w") as target:
        for record in source.infolist():
            if not record.filename.endswith(".debug_pkl"):
                target.writestr(record, source.read(record.filename))
    os.replace(stripped, path)


def _parity(graph: Graph, directory: Path, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output: the worst float difference or the fraction of differing integers, ONNX and TorchScript."""
    tensors = [torch.from_numpy(inputs[spec.name]) for spec in graph.inputs]
    with torch.no_grad():
        expected = [t.numpy() for t in graph.module(*tensors)]
        scripted = torch.jit.load(directory / repository.TORCHSCRIPT_FILE)
        candidates = {
            "onnx": onnxruntime.InferenceSession(str(directory / repository.ONNX_FILE), providers=["CPUExecutionProvider"]).run(
                [t.name for t in graph.outputs], inputs
            ),
            "torchscript": [t.numpy() for t in scripted(*tensors)],
        }
    report = {}
    for runtime, outputs in candidates.items():
        for spec, want, got in zip(graph.outputs, expected, outputs):
            report[f"{runtime}.{spec.name}"] = _difference(spec, want, got)
    return report


def _difference(spec: TensorSpec, want: np.ndarray, got: np.ndarray) -> float:
    if got.shape != want.shape or got.dtype != np.dtype(spec.dtype):
        raise ParityError(f"{spec.name}: got {got.dtype}{got.shape}, want {spec.dtype}{want.shape}")
    if spec.dtype == "float32":
        worst = float((np.abs(got - want) / np.maximum(1, np.abs(want))).max())
        if worst > FLOAT_TOLERANCE:
            raise ParityError(f"{spec.name}: max difference {worst:.3g} (relative beyond 1) > {FLOAT_TOLERANCE}")
        return worst
    mismatch = float((got != want).mean())
    if mismatch > BIT_TOLERANCE:
        raise ParityError(f"{spec.name}: {mismatch:.3%} of values differ (> {BIT_TOLERANCE:.3%})")
    return mismatch


def _tensor_configs(specs: tuple[TensorSpec, ...], message_type):
    return [message_type(name=s.name, data_type=repository.TRITON_DTYPES[s.dtype], dims=list(s.dims)) for s in specs]


def _config_text(entry_name: str, model: str, graph_name: str, graph: Graph, native: bool) -> str:
    config = model_config_pb2.ModelConfig(
        name=entry_name,
        max_batch_size=MAX_BATCH_SIZE,
        input=_tensor_configs(graph.inputs, model_config_pb2.ModelInput),
        output=_tensor_configs(graph.outputs, model_config_pb2.ModelOutput),
        version_policy=model_config_pb2.ModelVersionPolicy(
            latest=model_config_pb2.ModelVersionPolicy.Latest(num_versions=VERSIONS_KEPT_LOADED)
        ),
        dynamic_batching=model_config_pb2.ModelDynamicBatching(max_queue_delay_microseconds=QUEUE_DELAY_MICROSECONDS),
    )
    warmup = config.model_warmup.add(name="random", batch_size=WARMUP_BATCH_SIZE)
    for spec in graph.inputs:
        warmup.inputs[spec.name].data_type = repository.TRITON_DTYPES[spec.dtype]
        warmup.inputs[spec.name].dims.extend(spec.dims)
        if spec.dtype == "float32":
            warmup.inputs[spec.name].random_data = True
        else:  # random integers would be out of range for a class label
            warmup.inputs[spec.name].zero_data = True
    parameters = {"model": model, "graph": graph_name, "capability": graph.capability}
    if graph.classes:
        parameters["classes"] = str(graph.classes)
    if native:
        config.platform = "onnxruntime_onnx"
        config.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU)
    else:
        config.backend = "python"
        config.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        parameters.update(model_file=repository.ONNX_FILE, intra_op_threads="1")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return text_format.MessageToString(config)


def _check_signature_unchanged(entry_path: Path, entry_name: str, graph: Graph) -> None:
    """Versions of one entry share config.pbtxt, so a new version must keep the tensors of the old ones."""
    if not (entry_path / repository.CONFIG_FILE).is_file():
        return
    old = repository.read_entry(entry_path)
    new = tuple((t.name, np.dtype(t.dtype), t.dims) for t in graph.inputs + graph.outputs)
    if tuple((t.name, t.dtype, t.dims) for t in old.inputs + old.outputs) != new:
        raise ValueError(f"{entry_name}: tensors differ from the existing versions; export under a new model name")


def _source_commit() -> str:
    """HEAD, marked -dirty if tracked source differs from it (model_repository/ is output, not source)."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!model_repository"],
        capture_output=True, text=True, cwd=root,
    ).stdout.strip()
    return (head or "unknown") + ("-dirty" if changed else "")
