"""The model repository on disk, as Triton lays it out and as the exporter writes it.

    model_repository/<model>_<graph>/config.pbtxt        python backend: model.py runs onnxruntime
    model_repository/<model>_<graph>/configs/native.pbtxt onnxruntime backend, for the official GPU image
    model_repository/<model>_<graph>/<version>/{model.onnx, model.pt, model.py, card.json}

config.pbtxt is the one description of an entry: its tensors, version policy, and (as parameters) the
model, graph and capability it serves (and, for a class-conditional graph, how many classes). It is parsed with Triton's own ModelConfig message.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from latentserve.contract import LATENT, TensorSpec

CONFIG_FILE = "config.pbtxt"
NATIVE_CONFIG_FILE = "configs/native.pbtxt"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
CARD_FILE = "card.json"

TRITON_DTYPES = {
    "float32": model_config_pb2.TYPE_FP32,
    "uint8": model_config_pb2.TYPE_UINT8,
    "int64": model_config_pb2.TYPE_INT64,
}
DTYPE_NAMES = {triton: name for name, triton in TRITON_DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    """One model repository entry, with the versions its version policy selects (newest first)."""

    name: str
    path: Path
    model: str
    graph: str
    capability: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    versions: tuple[int, ...]
    cards: dict[int, dict]  # model card of every version on disk
    classes: int = 0  # a class-conditional graph's labels are 0..classes-1

    def version_path(self, version: int) -> Path:
        return self.path / str(version)

    @property
    def latent_dim(self) -> int:
        """The size of a generator graph's latent input."""
        return next(tensor.dims[0] for tensor in self.inputs if tensor.name == LATENT)


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def available_versions(entry_path: Path) -> list[int]:
    """Numeric version directories; anything else (an export's staging directory) is not a version."""
    return sorted(int(p.name) for p in entry_path.iterdir() if p.is_dir() and p.name.isdigit())


def select_versions(config: model_config_pb2.ModelConfig, available: list[int]) -> tuple[int, ...]:
    """Triton's version policy: latest N (default 1), all, or specific versions."""
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        chosen = available
    elif policy == "specific":
        chosen = [v for v in available if v in set(config.version_policy.specific.versions)]
    else:
        count = config.version_policy.latest.num_versions if policy == "latest" else 1
        chosen = available[-count:]
    return tuple(sorted(chosen, reverse=True))


def _signature(tensors) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, DTYPE_NAMES[t.data_type], tuple(t.dims)) for t in tensors)


def read_entry(path: Path) -> Entry:
    config = read_config(path / CONFIG_FILE)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    available = available_versions(path)
    return Entry(
        name=config.name or path.name,
        path=path,
        model=parameters["model"],
        graph=parameters["graph"],
        capability=parameters["capability"],
        max_batch_size=config.max_batch_size,
        inputs=_signature(config.input),
        outputs=_signature(config.output),
        versions=select_versions(config, available),
        cards={v: json.loads((path / str(v) / CARD_FILE).read_text()) for v in available},
        classes=int(parameters.get("classes", 0)),
    )


def read_repository(root: Path) -> dict[str, Entry]:
    """Every entry with a config.pbtxt under `root`, by entry name."""
    entries = [read_entry(p) for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()]
    return {entry.name: entry for entry in entries}
