"""The one training loop: the model's `train_step` over shuffled batches, a checkpoint after every epoch, resumable.
Semi-supervised runs also keep `best.pt`, the epoch with the lowest validation error so far."""
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tqdm import tqdm

from latentserve.datasets import Mnist
from latentserve.grid import save_grid
from training.registry import build, model_class
from training.semi_supervised import SemiSupervisedConfig, hide_labels

PREVIEW_IMAGES = 16


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(checkpoint: dict) -> torch.nn.Module:
    model = build(checkpoint["model"], checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def checkpoint_from_version(version_dir: Path, run_dir: Path) -> Path:
    """Start `run_dir/checkpoint.pt` from an exported version, so a run lost with its machine resumes from what
    was shipped: weights from the ONNX graph's initialisers (the exporter keeps parameter names under `model.`),
    epochs and history from the card. The optimisers' moments start afresh; the rate schedule goes on by epoch."""
    card = json.loads((version_dir / "card.json").read_text())
    model = build(card["model"], card["config"])
    weights = {
        initializer.name.removeprefix("model."): torch.from_numpy(np.array(numpy_helper.to_array(initializer)))
        for initializer in onnx.load(version_dir / "model.onnx").graph.initializer
    }
    missing = [key for key in model.state_dict() if key not in weights]
    if missing:
        raise ValueError(f"{version_dir}/model.onnx lacks {len(missing)} of {card['model']}'s parameters, e.g. {missing[0]}")
    model.load_state_dict({key: weights[key] for key in model.state_dict()})
    torch.manual_seed(card["config"]["seed"] + card["training"]["epochs"])
    checkpoint = {
        "model": card["model"],
        "config": card["config"],
        "state_dict": model.state_dict(),
        "epoch": card["training"]["epochs"],
        "step": card["training"]["steps"],
        "history": card["training"]["history"],
        "rng": torch.get_rng_state(),
        "data_sha256": card["data"]["sha256"],
        "data_source": card["data"]["source"],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "checkpoint.pt"
    if path.exists():
        raise FileExistsError(f"{path} exists: resume it, or move it away to start from {version_dir}")
    _save_atomically(path, checkpoint)
    return path


def train(name: str, run_dir: Path, data: Mnist, overrides: dict | None = None, threads: int = 2) -> Path:
    """Train `name` into `run_dir/checkpoint.pt`, resuming from it if present. Returns the checkpoint path."""
    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "checkpoint.pt"
    if path.exists():
        checkpoint = load_checkpoint(path)
        if checkpoint["model"] != name or checkpoint["data_sha256"] != data.sha256:
            raise ValueError(f"{path} holds {checkpoint['model']} trained on data {checkpoint['data_sha256']}")
        model = load_model(checkpoint)
        config = model.config.model_copy(update=overrides or {})
        if config.model_dump(exclude={"epochs"}) != model.config.model_dump(exclude={"epochs"}):
            raise ValueError(f"{path}: only `epochs` may change when resuming")
        model.config = config
        torch.set_rng_state(checkpoint["rng"])
    else:
        checkpoint = {"epoch": 0, "step": 0, "history": []}
        config = model_class(name).Config(**(overrides or {}))
        torch.manual_seed(config.seed)
        model = build(name, config.model_dump())
    optimizers = model.optimizers()
    # each group's own starting rate (the model's optimizers() sets it); the decay scales it per epoch
    initial_rates = {key: [group["lr"] for group in optimizer.param_groups] for key, optimizer in optimizers.items()}
    for key, state in checkpoint.get("optimizers", {}).items():
        optimizers[key].load_state_dict(state)

    train_images, train_labels = torch.from_numpy(data.train.images[:, None]), torch.from_numpy(data.train.labels).long()
    valid_images, valid_labels = torch.from_numpy(data.valid.images[:, None]), torch.from_numpy(data.valid.labels).long()
    preview = valid_images[:PREVIEW_IMAGES]
    labelled = None
    if isinstance(config, SemiSupervisedConfig):
        train_labels, labelled = hide_labels(train_labels, config)
    if checkpoint["epoch"] == 0 and hasattr(model, "initialise"):  # a fresh run's pretrained parts (m1m2, cyclegan)
        model.initialise(train_images, train_labels)
    step, history = checkpoint["step"], checkpoint["history"]
    for epoch in range(checkpoint["epoch"], config.epochs):
        model.train()
        for key, optimizer in optimizers.items():
            for group, rate in zip(optimizer.param_groups, initial_rates[key]):
                group["lr"] = rate * config.learning_rate_decay**epoch
        started = time.perf_counter()
        order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(config.seed * 10_000 + epoch))
        batches = tqdm(order.split(config.batch_size), desc=f"{name} epoch {epoch + 1}/{config.epochs}", leave=False, mininterval=5)
        sums: dict[str, float] = {}
        for indices in batches:
            if labelled is not None:  # each batch also gets labelled images (training/semi_supervised.py)
                indices = torch.cat([indices, labelled[torch.randint(len(labelled), (config.labelled_batch_size,))]])
            terms = model.train_step(train_images[indices], train_labels[indices], optimizers)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            step += 1
            batches.set_postfix({key: f"{value:.3g}" for key, value in terms.items()}, refresh=False)
        model.eval()
        history.append({
            "epoch": epoch + 1, "step": step,
            "train": {key: value / len(batches) for key, value in sums.items()},
            "valid": model.validate(valid_images, valid_labels),
            "seconds": round(time.perf_counter() - started, 1),
        })
        print(json.dumps(history[-1]), flush=True)
        save_grid(model.preview(preview).numpy(), run_dir / "grid.png", columns=PREVIEW_IMAGES)
        checkpoint = {
            "model": name,
            "config": config.model_dump(),
            "state_dict": model.state_dict(),
            "optimizers": {key: optimizer.state_dict() for key, optimizer in optimizers.items()},
            "epoch": epoch + 1,
            "step": step,
            "history": history,
            "rng": torch.get_rng_state(),
            "data_sha256": data.sha256,
            "data_source": data.source,
        }
        _save_atomically(path, checkpoint)
        if labelled is not None and history[-1]["valid"]["error"] <= min(entry["valid"]["error"] for entry in history):
            _save_atomically(run_dir / "best.pt", checkpoint)  # the protocol's model selection: lowest validation error
    return path


def _save_atomically(path: Path, checkpoint: dict) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)
