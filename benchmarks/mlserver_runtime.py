"""The small custom MLServer runtime `bench peers` serves the ONNX model with: onnxruntime with the
gateway's session options (one intra-op thread), run on MLServer's event loop. It runs inside MLServer's
own virtual environment (`make peers`), so it imports nothing of latentserve."""
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        outputs = self._session.run(self._outputs, inputs)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._outputs, outputs)]
        )
