"""The model repository on disk, as Triton lays it out and as the exporter writes it.

    model_repository/<model>_<graph>/config.pbtxt        python backend: model.py runs onnxruntime
    model_repository/<model>_<graph>/configs/native.pbtxt onnxruntime backend, for the official GPU image
    model_repository/<model>_<graph>/<version>/{model.onnx, model.pt, model.py, card.json}

config.pbtxt is the one description of an entry: its tensors, version policy, and (as parameters) the
model, graph and capability it serves (and, for a class-conditional graph, how many classes). It is parsed with Triton's own ModelConfig message.

A version is served only if it is valid (`read_card`): a real directory (not a symlink, which could point
outside the repository) named by its number in ASCII digits, with a card.json whose `files` records the
sha256 of each of the version's other files, and files that match. Anything else in a version's place (an
export's hidden staging directory and configs/ aside) is skipped with a warning and its reason kept in
`Entry.skipped`; the version policy chooses among the valid versions, so one bad directory never keeps
the others from serving.
"""
import hashlib
import json
import logging
import re
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
NATIVE_CONFIGS_DIR = NATIVE_CONFIG_FILE.split("/")[0]

TRITON_DTYPES = {
    "float32": model_config_pb2.TYPE_FP32,
    "uint8": model_config_pb2.TYPE_UINT8,
    "int64": model_config_pb2.TYPE_INT64,
}
DTYPE_NAMES = {triton: name for name, triton in TRITON_DTYPES.items()}

log = logging.getLogger(__name__)


class InvalidVersion(ValueError):
    """Why a version directory cannot be served."""


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
    cards: dict[int, dict]  # model card of every valid version on disk
    skipped: dict[str, str]  # directory name -> why it is not served
    classes: int = 0  # a class-conditional graph's labels are 0..classes-1

    def version_path(self, version: int) -> Path:
        return self.path / str(version)

    @property
    def latent_dim(self) -> int:
        """The size of a generator graph's latent input."""
        return next(tensor.dims[0] for tensor in self.inputs if tensor.name == LATENT)


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def is_version_name(name: str) -> bool:
    """A number as str(version) writes it: ASCII digits ('²' and '٣' pass str.isdigit()), no leading zero
    (Entry.version_path would not find "007")."""
    return re.fullmatch(r"0|[1-9][0-9]*", name) is not None


def version_directories(entry_path: Path) -> list[Path]:
    """Every directory in an entry where versions go, valid or not: all but configs/ and hidden ones (an
    export's staging directory)."""
    return sorted(
        p for p in entry_path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != NATIVE_CONFIGS_DIR
    )


def available_versions(entry_path: Path) -> list[int]:
    """The numbers of an entry's version directories, valid or not (the exporter numbers the next one)."""
    return sorted(int(p.name) for p in version_directories(entry_path) if is_version_name(p.name))


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def checksums(version_path: Path) -> dict[str, str]:
    """The sha256 of each file of a version directory but its card: what the card records as `files`."""
    return {p.name: file_sha256(p) for p in sorted(version_path.iterdir()) if p.is_file() and p.name != CARD_FILE}


def read_card(version_path: Path) -> dict:
    """The model card of a valid version; InvalidVersion says why a version directory is not one."""
    if version_path.is_symlink():
        raise InvalidVersion("a symlink, refused: it could point outside the repository")
    if not is_version_name(version_path.name):
        raise InvalidVersion("the name is not a version number (ASCII digits, no leading zero)")
    if not (version_path / CARD_FILE).is_file():
        raise InvalidVersion(f"no {CARD_FILE}")
    try:
        card = json.loads((version_path / CARD_FILE).read_text())
    except ValueError as error:
        raise InvalidVersion(f"{CARD_FILE} is not JSON: {error}") from None
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
        raise InvalidVersion(f"{CARD_FILE} has no checksums (files)")
    for name, sha256 in card["files"].items():
        if not (version_path / name).is_file():
            raise InvalidVersion(f"{name} is missing")
        if file_sha256(version_path / name) != sha256:
            raise InvalidVersion(f"{name} does not match its checksum in {CARD_FILE}")
    return card


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
    cards, skipped = {}, {}
    for directory in version_directories(path):
        try:
            card = read_card(directory)
        except (InvalidVersion, OSError) as error:  # OSError: unreadable, or removed while being read
            log.warning("%s: skipping version directory %r: %s", path.name, directory.name, error)
            skipped[directory.name] = str(error)
        else:
            cards[int(directory.name)] = card
    return Entry(
        name=config.name or path.name,
        path=path,
        model=parameters["model"],
        graph=parameters["graph"],
        capability=parameters["capability"],
        max_batch_size=config.max_batch_size,
        inputs=_signature(config.input),
        outputs=_signature(config.output),
        versions=select_versions(config, sorted(cards)),
        cards=cards,
        skipped=skipped,
        classes=int(parameters.get("classes", 0)),
    )


def read_repository(root: Path) -> dict[str, Entry]:
    """Every entry with a config.pbtxt under `root`, by entry name."""
    entries = [read_entry(p) for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()]
    return {entry.name: entry for entry in entries}
