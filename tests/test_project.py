"""Project contracts: generated stubs match the protos, serving stays free of torch, every CLI verb helps."""
import filecmp
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_tools import protoc

from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, generator_pb2, generator_pb2_grpc
from benchmarks.layout import cycles, import_graph
from serving.triton_server import free_ports
from tests.conftest import ROOT

PROTOS = sorted((ROOT / "proto").rglob("*.proto"))


def test_generated_stubs_match_the_protos(tmp_path):
    args = ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    assert protoc.main(args + [str(p) for p in PROTOS]) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "latentserve" / "v1").glob("*_pb2*"))
    assert generated == committed, "run `make proto`"
    for path in generated:
        assert filecmp.cmp(tmp_path / path, ROOT / path, shallow=False), f"{path} is stale: run `make proto`"


def test_no_module_imports_one_that_imports_it_back():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can see one
    assert cycles(import_graph(ROOT)) == []


def test_the_layers_import_only_what_sits_below_them():
    """latentserve's shared modules import no other part; training and export never import serving."""
    graph = import_graph(ROOT)
    shared = [name for name in graph if name.startswith("latentserve.") and name not in ("latentserve.cli", "latentserve.batch_job")]
    for name in shared:
        assert all(target.startswith("latentserve") for target in graph[name]), (name, graph[name])
    for name in graph:
        if name.startswith(("training", "export")):
            assert not any(target.startswith(("serving", "benchmarks")) for target in graph[name]), (name, graph[name])


def test_serving_runs_without_torch_or_training():
    script = "import sys, serving.server, latentserve.cli; sys.exit(bool({'torch', 'training', 'export', 'sklearn'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", script]).returncode == 0
    for path in (ROOT / "serving").rglob("*.py"):
        source = path.read_text()
        assert "import torch" not in source and "from training" not in source, path


@pytest.mark.parametrize("verb", [[], ["train"], ["export"], ["serve"], ["triton"], ["bench"], ["eval"], ["models"], ["encode"], ["classify"],
                                   ["translate"], ["search"], ["index"], ["index", "add"], ["index", "delete"], ["index", "stats"], ["generate"],
                                   ["token"], ["token", "create"], ["token", "list"], ["token", "revoke"]])
def test_every_verb_has_help(verb):
    result = subprocess.run([sys.executable, "-m", "latentserve.cli", *verb, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: latentserve" in result.stdout


def test_metrics_count_calls_by_method_and_code_and_generated_images(start_gateway, tmp_path):
    grpc_port, port = free_ports(2)  # both chosen here: a gRPC port of 0 could be given the metrics one
    gateway = start_gateway(data_dir=tmp_path, gallery="none", port=grpc_port, metrics_port=port)

    def count(series: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)), 0.0)

    failed = 'latentserve_requests_total{code="INVALID_ARGUMENT",method="/latentserve.v1.Encoder/Encode"}'
    streamed = 'latentserve_requests_total{code="OK",method="/latentserve.v1.Generator/GenerateStream"}'
    generated = 'latentserve_generated_images_total{model="acgan"}'
    before = {series: count(series) for series in (failed, streamed, generated)}
    with gateway.channel() as channel:
        with pytest.raises(grpc.RpcError):
            encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest())
        request = generator_pb2.GenerateStreamRequest(model=common_pb2.ModelRef(name="acgan"), count=5, chunk_size=2)
        assert len(list(generator_pb2_grpc.GeneratorStub(channel).GenerateStream(request))) == 3
    assert count(failed) == before[failed] + 1
    assert count(streamed) == before[streamed] + 1
    assert count(generated) == before[generated] + 5
