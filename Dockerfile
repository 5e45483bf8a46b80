# Production images; docs/deploy.md says how to build and run them. Targets:
#   gateway  the gRPC gateway (`latentserve serve`): Python 3.11 slim, serving dependencies only (no torch)
#   triton   the official Triton image serving model_repository/ with its native configs (onnxruntime, GPU)
# gateway-build is a build stage only: it turns the project and its pinned dependencies into wheels.

ARG PYTHON_IMAGE=python:3.11-slim
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${PYTHON_IMAGE} AS gateway-build
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY latentserve latentserve
COPY serving serving
# The milvus extra: the gateway can keep its collections on Milvus (LATENTSERVE_INDEX_BACKEND=milvus, compose.yaml).
RUN pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels '.[milvus]'

FROM ${PYTHON_IMAGE} AS gateway
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin latentserve \
 && mkdir /data \
 && chown latentserve /data
# The wheels are mounted, not copied, so they add no layer; --no-index: nothing is fetched or compiled here.
RUN --mount=type=bind,from=gateway-build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels 'latentserve[milvus]'
WORKDIR /app
COPY model_repository model_repository
# Beyond loopback the gateway serves only TLS with tokens: the certificate, its key and the tokens file are
# secrets mounted at /run/secrets (compose.yaml; docs/deploy.md makes them). Health also answers alone on
# a plaintext port of its own, from a thread of its own, so probes get an answer under any load.
ENV PYTHONUNBUFFERED=1 \
    LATENTSERVE_HOST=0.0.0.0 \
    LATENTSERVE_MODEL_REPOSITORY=/app/model_repository \
    LATENTSERVE_DATA_DIR=/data \
    LATENTSERVE_TLS_CERT_FILE=/run/secrets/gateway.crt \
    LATENTSERVE_TLS_KEY_FILE=/run/secrets/gateway.key \
    LATENTSERVE_TOKENS_FILE=/run/secrets/tokens.json \
    LATENTSERVE_METRICS_HOST=0.0.0.0 \
    LATENTSERVE_HEALTH_PORT=50052
VOLUME /data
USER latentserve
EXPOSE 50051 9464 50052
# Healthy once the models are loaded: gRPC health of the whole server (""), as grpc_health_probe asks it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, grpc; from grpc_health.v1 import health_pb2 as pb, health_pb2_grpc as rpc; channel = grpc.insecure_channel('127.0.0.1:' + os.environ['LATENTSERVE_HEALTH_PORT']); raise SystemExit(rpc.HealthStub(channel).Check(pb.HealthCheckRequest(), timeout=3).status != pb.HealthCheckResponse.SERVING)"]
CMD ["latentserve", "serve"]

FROM ${TRITON_IMAGE} AS triton
COPY model_repository /models
# triton-server (uid 1000) is the official image's own non-root user.
USER triton-server
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8000/v2/health/ready"]
# Explicit control, loading every model at start: a model that fails to load stops the server, and a new
# version (with the repository mounted over /models) goes live only when asked to (docs/deploy.md).
CMD ["tritonserver", "--model-repository=/models", "--model-config-name=native", "--model-control-mode=explicit", "--load-model=*"]
