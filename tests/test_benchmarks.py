"""The comparison harness in its short mode: every path of `latentserve bench peers` answers, in one run."""
import re

import pytest

from benchmarks import peers
from tests.conftest import MODEL_REPOSITORY

pytestmark = [pytest.mark.triton, pytest.mark.slow]  # starts tritonserver, two gateways and MLServer


def test_bench_peers_measures_every_path_in_its_short_mode(capsys):
    peers.main(MODEL_REPOSITORY, duration=0.3, batches=(1,), concurrencies=(1,))
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| 1 \| 1 \|", line)]
    paths = [row.split("|")[3].strip() for row in rows]
    assert paths == [
        "onnxruntime, in process", "latentserve, embedded", "latentserve, Open Inference Protocol", "latentserve -> Triton",
        "Triton, tritonclient", "MLServer, custom runtime",
    ]
    for row in rows:
        requests_per_s, cpu_ms = float(row.split("|")[4]), float(row.split("|")[8])
        assert requests_per_s > 10 and cpu_ms > 0
