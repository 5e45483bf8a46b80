"""Benchmarks and evaluations: the code behind `latentserve bench` and `latentserve eval`, apart from what it
measures. Throughput of the gateway against onnxruntime called directly (`gateway`, `generation_stream`)
and against Triton (`triton`); quality of the shipped models run from the model repository: retrieval
(`retrieval`), semi-supervised error (`semi_supervised`), generated samples (`generation_quality`) and
translations (`translation_quality`). docs/benchmarks.md reports their figures.
"""
