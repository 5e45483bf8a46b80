"""`latentserve eval rbm --checkpoints RUN...`: each RBM run's test log-likelihood by annealed importance
sampling (training/rbm.py: 100 runs, 14,500 inverse temperatures from the base-rate model, seed 0), with
the 3-sigma interval of log Z carried over, beside Salakhutdinov & Murray's figures. A shipped version's
card holds the same figures, computed the same way at export."""
from pathlib import Path

from benchmarks.runs import evaluated_runs

PUBLISHED = "Salakhutdinov & Murray 2008 (ICML), MNIST, 500 hidden units trained by CD-25: -86.34 nats (AIS)"


def main(checkpoints: list[Path]) -> None:
    runs = evaluated_runs(checkpoints, "rbm")
    print(f"{PUBLISHED}\n")
    print("| run | hidden | training | epochs | log Z (3-sigma) | test log-likelihood, nats (3-sigma) |")
    print("|---|---|---|---|---|---|")
    for path, checkpoint, model, m in runs:
        config = model.config
        training = f"PCD ({config.batch_size} chains)" if config.persistent else f"CD-{config.cd_steps}"
        print(f"| {path} | {config.hidden} | {training}, SGD {config.learning_rate} | {checkpoint['epoch']} | "
              f"{m['log_partition']:.2f} ({_end(m['log_partition_low'])} to {_end(m['log_partition_high'])}) | "
              f"{m['test_log_likelihood']:.2f} ({_end(m['test_log_likelihood_low'])} to {_end(m['test_log_likelihood_high'])}) |", flush=True)


def _end(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.2f}"
