# The README's two commands: `make run` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup proto train export bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,dev,triton]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/latentserve serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Regenerate the gRPC stubs in latentserve/v1 from proto/ (tests check they match).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. proto/latentserve/v1/*.proto

# Train and export the shipped models (docs/training.md): about an hour on 2 cores.
train: $(STAMP)
	$(BIN)/latentserve train autoencoder
	$(BIN)/latentserve train vae

export: $(STAMP)
	$(BIN)/latentserve export runs/autoencoder/checkpoint.pt
	$(BIN)/latentserve export runs/vae/checkpoint.pt

bench: $(STAMP)
	$(BIN)/latentserve bench retrieval
	$(BIN)/latentserve bench serving
	$(BIN)/latentserve bench triton

clean:
	rm -rf $(VENV)
