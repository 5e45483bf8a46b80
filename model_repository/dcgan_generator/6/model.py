"""Triton Python-backend model (copied as `model.py` into every exported version).

Runs the version's ONNX graph with onnxruntime, or its TorchScript file with `torch.jit.load`, as the
`model_file` parameter of config.pbtxt says. Triton's dynamic batcher hands `execute` a list of requests
without stacking them: they are concatenated, run once, and the outputs split back per request. A request
whose inputs are unusable gets its own error; the others still run.
"""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        threads = int(parameters.get("intra_op_threads", "1"))
        model_file = Path(args["model_repository"]) / args["model_version"] / parameters.get("model_file", "model.onnx")
        if model_file.suffix == ".pt":
            import torch

            torch.set_num_threads(threads)
            module = torch.jit.load(str(model_file), map_location="cpu").eval()

            def run(feeds):
                with torch.no_grad():
                    outputs = module(*(torch.from_numpy(feeds[name]) for name in self.input_names))
                return [output.numpy() for output in outputs]
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

            def run(feeds):
                return session.run(self.output_names, feeds)

        self.run = run

    def execute(self, requests):
        responses = [None] * len(requests)
        accepted, feeds_per_request = [], []
        for index, request in enumerate(requests):
            try:
                feeds_per_request.append({
                    name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names
                })
                accepted.append(index)
            except Exception as error:  # one bad request must not fail the batch
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad input: {error}"))
        if accepted:
            sizes = [len(feeds[self.input_names[0]]) for feeds in feeds_per_request]
            batch = {name: np.concatenate([feeds[name] for feeds in feeds_per_request]) for name in self.input_names}
            try:
                outputs = self.run(batch)
            except Exception as error:
                for index in accepted:
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
                return responses
            bounds = np.cumsum([0] + sizes)
            for position, index in enumerate(accepted):
                start, stop = bounds[position], bounds[position + 1]
                responses[index] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, output[start:stop]) for name, output in zip(self.output_names, outputs)
                ])
        return responses
