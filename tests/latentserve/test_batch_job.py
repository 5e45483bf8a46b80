"""`latentserve generate`: a batch job killed mid-run and resumed ends byte for byte like an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from latentserve.files import PARTIAL
from tests.conftest import RunningGateway, wait_for


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none").start()
    yield running
    running.stop()


def job(gateway, out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "latentserve.cli", "generate", "--target", gateway.target, "--model", "acgan",
            "--seed", "3", "--truncation", "0.8", "--out", str(out), *extra]


def files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("image_format", ["png", "npz"])
def test_a_killed_then_resumed_job_equals_an_uninterrupted_one(gateway, tmp_path, image_format):
    count, chunk = 3000, 40
    options = ["--count", str(count), "--chunk-size", str(chunk), "--format", image_format]
    subprocess.run(job(gateway, tmp_path / "straight", *options, "--grid"), check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(job(gateway, interrupted, *options), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = interrupted / ("images" if image_format == "png" else "chunks")
    wait_for(lambda: written.is_dir() and len(os.listdir(written)) >= 8, timeout=60)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len([p for p in os.listdir(written) if PARTIAL not in p])
    assert 0 < partial < count / (1 if image_format == "png" else chunk), "the kill came after the job had finished"

    refused = subprocess.run(job(gateway, interrupted, *options), capture_output=True, text=True)
    assert refused.returncode == 2 and "error: " in refused.stderr and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    subprocess.run(job(gateway, interrupted, *options, "--resume", "--grid"), check=True, capture_output=True)

    straight, resumed = files(tmp_path / "straight"), files(interrupted)
    assert sorted(resumed) == sorted(straight)  # no gap, no duplicate, no temporary file left
    assert json.loads(resumed.pop("job.json")) == json.loads(straight.pop("job.json"))
    if image_format == "png":
        assert len([name for name in straight if name.startswith("images/")]) == count
        assert resumed == straight
    else:
        for name in straight:
            if name.endswith(".npz"):
                with np.load(tmp_path / "straight" / name) as want, np.load(interrupted / name) as got:
                    for key in ("images", "indices", "labels"):
                        assert want[key].tobytes() == got[key].tobytes(), (name, key)
            else:
                assert resumed[name] == straight[name], name
        assert sum(np.load(tmp_path / "straight" / n)["images"].shape[0] for n in straight if n.endswith(".npz")) == count


def test_a_resumed_job_deletes_what_a_kill_left_mid_write(gateway, tmp_path):
    # the kill above lands mid-write only sometimes; here a write's temporary file is left on purpose
    subprocess.run(job(gateway, tmp_path, "--count", "5", "--chunk-size", "2"), check=True, capture_output=True)
    whole = files(tmp_path)
    (tmp_path / "images" / "000000004.png").unlink()
    (tmp_path / "images" / f".000000004.png{PARTIAL}k1ll3d00").write_bytes(b"half a png")
    subprocess.run(job(gateway, tmp_path, "--count", "5", "--chunk-size", "2", "--resume"), check=True, capture_output=True)
    assert files(tmp_path) == whole


def test_a_job_pins_the_version_and_refuses_a_different_job_in_the_same_directory(gateway, tmp_path):
    subprocess.run(job(gateway, tmp_path, "--count", "5"), check=True, capture_output=True)
    recorded = json.loads((tmp_path / "job.json").read_text())
    assert recorded["version"] >= 1 and recorded["count"] == 5 and recorded["label"] is None
    other = subprocess.run(job(gateway, tmp_path, "--count", "6", "--resume"), capture_output=True, text=True)
    assert other.returncode != 0 and "different job" in other.stderr


def test_a_refused_job_says_why_and_how_to_continue(gateway, tmp_path):
    result = subprocess.run(job(gateway, tmp_path, "--count", "5", "--class", "12"), capture_output=True, text=True)
    assert result.returncode != 0
    assert "error: INVALID_ARGUMENT: sampling.labels[0]" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.stderr
