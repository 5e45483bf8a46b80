"""The Dockerfile and compose.yaml, checked without Docker (no engine runs here): the paths they copy exist,
the stages, commands, settings and health checks they name exist, and the native Triton configs parse."""
import json
import os
import re
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from latentserve.repository import CONFIG_FILE, NATIVE_CONFIG_FILE, ONNX_FILE, available_versions, read_config
from serving.settings import Settings
from tests.conftest import MODEL_REPOSITORY, ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = (ROOT / "compose.yaml").read_text()
TRITON_RUNTIME_SETTINGS = {"runtime", "triton_url"}  # compose sets them; the gateway's Triton runtime adds them


def read_stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions as (INSTRUCTION, arguments), by stage name; continuation lines joined."""
    stages = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, arguments = line.split(None, 1)
        if instruction.upper() == "FROM":
            stage = stages.setdefault(arguments.split()[-1], [])  # FROM <image> AS <name>
        elif stages:
            stage.append((instruction.upper(), arguments))
    return stages


def base_images(text: str) -> dict[str, str]:
    """Each stage's base image, with ${ARG}s replaced by their defaults."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    return {stage: re.sub(r"\$\{(\w+)\}", lambda arg: defaults[arg[1]], image)
            for image, stage in re.findall(r"^FROM (\S+) AS (\S+)", text, re.M | re.I)}


STAGES = read_stages(DOCKERFILE)


def arguments(stage: str, instruction: str) -> list[str]:
    return [args for name, args in STAGES[stage] if name == instruction]


def exec_form(args: str) -> list[str]:
    """The JSON array of a CMD, or of a HEALTHCHECK's CMD after its options."""
    return json.loads(args[args.index("["):])


def copies_from_context(stage: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from another stage)."""
    copies = []
    for args in arguments(stage, "COPY"):
        words = args.split()
        if not any(word.startswith("--from=") for word in words):
            paths = [word for word in words if not word.startswith("--")]
            copies.append((paths[:-1], paths[-1]))
    return copies


def env_settings(text: str) -> dict[str, str]:
    """Settings set as LATENTSERVE_<NAME>=value (ENV) or LATENTSERVE_<NAME>: value (compose), by field name."""
    return {name.lower(): value for name, value in re.findall(r"\bLATENTSERVE_(\w+)\s*[=:]\s*([^\s\\]+)", text)}


def test_copied_paths_exist_and_are_in_the_build_context():
    ignore_lines = (ROOT / ".dockerignore").read_text().splitlines()
    let_back_in = {line[1:].rstrip("/") for line in ignore_lines if line.startswith("!")}
    sources = {source for stage in STAGES for sources, _ in copies_from_context(stage) for source in sources}
    assert "*" in ignore_lines and sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in let_back_in, f".dockerignore keeps {source} out of the build context"


def test_stages_named_by_compose_and_by_the_dockerfile_exist():
    targets = set(re.findall(r"build:\s*\n\s*context:[^\n]*\n\s*target:\s*(\S+)", COMPOSE))  # not the secrets' targets
    assert targets == {"gateway", "triton"} and targets <= STAGES.keys()
    used = set(re.findall(r"[-,]from=([\w.-]+)", DOCKERFILE))  # COPY --from=, RUN --mount=...,from=
    assert used and used <= STAGES.keys()
    assert base_images(DOCKERFILE).keys() == STAGES.keys()


def test_gateway_command_exists():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    command = exec_form(arguments("gateway", "CMD")[-1])
    assert command[:2] == ["latentserve", "serve"] and scripts["latentserve"] == "latentserve.cli:main"
    help_text = subprocess.run(
        [sys.executable, "-m", "latentserve.cli", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (word.split("=")[0] for word in command if word.startswith("--")):
        assert flag in help_text, flag


def test_settings_the_images_set_exist_and_match_their_paths_and_ports():
    image = env_settings(" ".join(arguments("gateway", "ENV")))
    composed = env_settings(COMPOSE)
    assert (image.keys() | composed.keys()) - TRITON_RUNTIME_SETTINGS <= Settings.model_fields.keys()
    settings = Settings(**image)
    assert settings.host == "0.0.0.0"
    workdir = arguments("gateway", "WORKDIR")[-1]
    assert [Path(workdir, dest) for sources, dest in copies_from_context("gateway")] == [settings.model_repository]
    assert arguments("gateway", "VOLUME") == [str(settings.data_dir)]
    assert f"gateway-data:{settings.data_dir}" in COMPOSE
    ports = [str(settings.port), str(settings.metrics_port), str(settings.health_port)]
    assert arguments("gateway", "EXPOSE")[0].split() == ports
    assert re.findall(r'"\d+:(\d+)"', COMPOSE) == ports[:1]  # /metrics and the health port stay on the compose network
    assert settings.tls and settings.tokens_file, "beyond loopback: TLS and tokens"
    for secret in (settings.tls_cert_file, settings.tls_key_file, settings.tokens_file):
        assert secret.parent == Path("/run/secrets") and f"target: {secret.name}" in COMPOSE, secret


def test_compose_runs_the_gateway_on_triton():
    if not TRITON_RUNTIME_SETTINGS <= Settings.model_fields.keys():
        pytest.skip("Settings has no runtime/triton_url fields yet: the gateway's Triton runtime has not landed")
    composed = env_settings(COMPOSE)
    assert Settings(**composed).runtime == "triton"
    host, port = composed["triton_url"].rsplit(":", 1)
    assert re.search(rf"^  {host}:$", COMPOSE, re.M), "triton_url names no compose service"
    assert port == "8001" and port in arguments("triton", "EXPOSE")[0].split()  # Triton's gRPC port


def test_triton_serves_the_copied_repository_with_native_configs():
    assert base_images(DOCKERFILE)["triton"].startswith("nvcr.io/nvidia/tritonserver:")
    (destination,) = [dest for sources, dest in copies_from_context("triton") if sources == ["model_repository"]]
    command = exec_form(arguments("triton", "CMD")[-1])
    assert command[0] == "tritonserver"
    assert f"--model-repository={destination}" in command and "--model-config-name=native" in command
    assert "http://127.0.0.1:8000/v2/health/ready" in exec_form(arguments("triton", "HEALTHCHECK")[0])


@pytest.mark.parametrize("stage", ["gateway", "triton"])
def test_runnable_stages_run_as_non_root_with_a_healthcheck(stage):
    users = arguments(stage, "USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert len(arguments(stage, "HEALTHCHECK")) == 1


def test_gateway_stage_installs_prebuilt_wheels_without_build_tools():
    assert base_images(DOCKERFILE)["gateway"] == "python:3.11-slim"
    commands = " ".join(arguments("gateway", "RUN"))
    assert not re.search(r"apt-get|apt install|gcc|g\+\+|clang|build-essential|\bmake\b", commands)
    assert "pip install" in commands and "--no-index" in commands


@pytest.mark.parametrize("status, exit_code", [
    (health_pb2.HealthCheckResponse.SERVING, 0),
    (health_pb2.HealthCheckResponse.NOT_SERVING, 1),
])
def test_gateway_healthcheck_asks_grpc_health_on_the_health_port(status, exit_code):
    probe = exec_form(arguments("gateway", "HEALTHCHECK")[0])
    assert probe[0] == "python"
    servicer = health.HealthServicer()
    servicer.set("", status)
    server = grpc.server(futures.ThreadPoolExecutor(1))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = subprocess.run([sys.executable, *probe[1:]], env={**os.environ, "LATENTSERVE_HEALTH_PORT": str(port)}, timeout=30)
    finally:
        server.stop(None)
    assert result.returncode == exit_code


@pytest.mark.parametrize("entry", sorted(p for p in MODEL_REPOSITORY.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_native_config_serves_the_same_tensors_with_onnxruntime(entry):
    config, native = read_config(entry / CONFIG_FILE), read_config(entry / NATIVE_CONFIG_FILE)
    assert native.platform == "onnxruntime_onnx"
    assert native.name == config.name == entry.name
    assert native.max_batch_size == config.max_batch_size
    assert list(native.input) == list(config.input) and list(native.output) == list(config.output)
    for version in available_versions(entry):
        assert (entry / str(version) / ONNX_FILE).is_file()  # the onnxruntime backend's default model file
