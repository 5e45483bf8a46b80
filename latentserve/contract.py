"""The contract between training, export and serving: what each capability's graph takes and returns.

A graph in the model repository serves one capability; its tensors carry these names and shapes, the
exporter writes them into `config.pbtxt` and the gateway reads them back from there. Shapes leave out the
batch axis.
"""
from dataclasses import dataclass

from latentserve.datasets import CLASSES

# capabilities: a graph's `capability` parameter in config.pbtxt
ENCODE, GENERATE, CLASSIFY, TRANSLATE, DENSITY = "encode", "generate", "classify", "translate", "density"
CAPABILITIES = (ENCODE, GENERATE, CLASSIFY, TRANSLATE, DENSITY)

# tensor names (ONNX names each value of a graph once, so a translator's output is not `image`)
IMAGE = "image"  # float32 (1, 28, 28) in [0, 1]: every image input, and a generator's output
CODE, BINARY_CODE = "code", "binary_code"  # encode: float32 (code_dim,), uint8 0/1 (bits,)
LATENT, LABEL = "latent", "label"  # generate: float32 (latent_dim,), int64 (1,) for class-conditional graphs
PROBABILITIES, FEATURES = "probabilities", "features"  # classify: float32 (classes,), (features,)
TRANSLATED = "translated"  # translate: float32 (1, 28, 28)
LOG_LIKELIHOOD, PIXEL_LOGITS = "log_likelihood", "pixel_logits"  # density: float32 (1,) nats, (1, 28, 28)
# generate by a Gibbs chain (an RBM): one step image -> hidden states drawn by the uniforms -> the next
# image's pixel probabilities; float32 (hidden,) in (0, 1], (1, 28, 28)
HIDDEN_UNIFORMS, NEXT_PROBABILITIES = "hidden_uniforms", "next_probabilities"

HEIGHT = WIDTH = 28
PIXELS = HEIGHT * WIDTH


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, uint8, int64
    dims: tuple[int, ...]  # without the batch axis


IMAGE_SPEC = TensorSpec(IMAGE, "float32", (1, HEIGHT, WIDTH))
TRANSLATED_SPEC = TensorSpec(TRANSLATED, "float32", (1, HEIGHT, WIDTH))
LABEL_SPEC = TensorSpec(LABEL, "int64", (1,))
PROBABILITIES_SPEC = TensorSpec(PROBABILITIES, "float32", (CLASSES,))
LOG_LIKELIHOOD_SPEC = TensorSpec(LOG_LIKELIHOOD, "float32", (1,))
PIXEL_LOGITS_SPEC = TensorSpec(PIXEL_LOGITS, "float32", (1, HEIGHT, WIDTH))
NEXT_PROBABILITIES_SPEC = TensorSpec(NEXT_PROBABILITIES, "float32", (1, HEIGHT, WIDTH))


def code_spec(dim: int) -> TensorSpec:
    return TensorSpec(CODE, "float32", (dim,))


def binary_code_spec(bits: int) -> TensorSpec:
    return TensorSpec(BINARY_CODE, "uint8", (bits,))


def latent_spec(dim: int) -> TensorSpec:
    return TensorSpec(LATENT, "float32", (dim,))


def hidden_uniforms_spec(hidden: int) -> TensorSpec:
    return TensorSpec(HIDDEN_UNIFORMS, "float32", (hidden,))


def features_spec(dim: int) -> TensorSpec:
    return TensorSpec(FEATURES, "float32", (dim,))
