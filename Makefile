# The README's two commands: `make run` and `make test`. Both set up .venv from nothing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

.PHONY: run test test-fast setup peers browser proto train export bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,dev,triton,milvus]'
	touch $(STAMP)

setup: $(STAMP)

# MLServer, for `latentserve bench peers`, in a virtual environment of its own (its pins are not ours);
# onnxruntime at our version, so both run the same kernels.
$(PEERS_STAMP): constraints.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet mlserver==1.7.1 "$$(grep '^onnxruntime==' constraints.txt)"
	touch $(PEERS_STAMP)

peers: $(PEERS_STAMP)

# Debian's Chromium and its driver, for the page's tests (tests/serving/test_browser.py), when missing.
browser:
	command -v chromedriver >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

run: $(STAMP)
	$(BIN)/latentserve serve

test: $(STAMP) $(PEERS_STAMP) browser
	$(BIN)/python -m pytest -q

# The tests without the slow ones (training, export, tritonserver): about 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

# Regenerate the gRPC stubs in latentserve/v1 from proto/ (tests check they match).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. proto/latentserve/v1/*.proto

SHIPPED := autoencoder vae lenet conv_vae dcgan wgan_gp wgan acgan m2 pix2pix cyclegan pixelcnn deep_autoencoder binary_autoencoder rbm

# Train and export the shipped models (docs/training.md has each one's time; run two at once with
# --threads 1 on 2 cores). lenet is exported first: the generators' model cards are scored with it.
train: $(STAMP)
	for model in $(SHIPPED); do $(BIN)/latentserve train $$model || exit 1; done
	$(BIN)/latentserve train acgan --set epochs=13  # acgan v2: the 10-epoch run resumed to 13
	$(BIN)/latentserve train ssgan --set data_seed=1  # ssgan v1 is data seed 1's run (seed 0's was gone before export)
	$(BIN)/latentserve train pix2pix --set adversarial=false --run-dir runs/unet-l1  # pix2pix's baseline, not shipped

export: $(STAMP)
	for model in $(filter-out m2,$(SHIPPED)); do $(BIN)/latentserve export runs/$$model/checkpoint.pt || exit 1; done
	$(BIN)/latentserve export runs/m2/best.pt  # m2 ships its epoch of lowest validation error
	$(BIN)/latentserve export runs/ssgan/checkpoint.pt

bench: $(STAMP)
	$(BIN)/latentserve bench retrieval
	$(BIN)/latentserve bench serving
	$(BIN)/latentserve bench triton
	$(BIN)/latentserve eval generation
	$(BIN)/latentserve bench generation
	$(BIN)/latentserve eval propagation
	$(BIN)/latentserve eval classification
	$(BIN)/latentserve bench classification
	$(BIN)/latentserve eval translation --checkpoints runs/unet-l1/checkpoint.pt --grids docs/images
	$(BIN)/latentserve bench translation

clean:
	rm -rf $(VENV) $(PEERS)
