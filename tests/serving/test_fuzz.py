"""Every call of latentserve.v1, fuzzed through real gRPC: hostile messages and bodies that may not parse
(the builders of benchmarks/fuzz.py, driven by hypothesis) get a status a client may get, never INTERNAL or
UNKNOWN, with no heap address in the message and no ERROR in the log, and the gateway keeps answering."""
import logging
import random

import pytest
from hypothesis import given, settings, strategies as st

from benchmarks import fuzz
from tests.conftest import Records, RunningGateway

# Hypothesis draws the seed of each request's random.Random (its own randoms() lean towards zeros, which
# rarely get past the first check); derandomized: the same requests every run. About 25 s in all here.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True)
SEEDS = st.integers(0, 2**64 - 1)


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    gateway = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none").start()
    with gateway.channel() as channel:
        fuzz.add_stored_items(channel)
        yield channel
    gateway.stop()


@pytest.fixture(scope="module")
def errors_logged():
    """Every record of ERROR or above, from any logger (grpc's included), while the module runs."""
    handler, logger = Records(), logging.getLogger()
    handler.setLevel(logging.ERROR)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def answer_well(channel, errors_logged, method: str, body: bytes) -> None:
    logged = len(errors_logged)
    code, details = fuzz.call(channel, method, body)
    assert fuzz.problems(code, details) == [], body
    assert errors_logged[logged:] == [], body
    assert fuzz.serving(channel)


@pytest.mark.parametrize("method", sorted(fuzz.METHODS))
@FUZZ
@given(seed=SEEDS)
def test_hostile_messages_get_a_client_status(channel, errors_logged, method, seed):
    answer_well(channel, errors_logged, method, fuzz.request(random.Random(seed), method).SerializeToString())


@pytest.mark.parametrize("method", sorted(fuzz.METHODS))
@FUZZ
@given(seed=SEEDS)
def test_bodies_that_may_not_parse_get_a_client_status(channel, errors_logged, method, seed):
    answer_well(channel, errors_logged, method, fuzz.body(random.Random(seed), method))
