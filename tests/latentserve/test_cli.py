"""The client verbs of `latentserve` over a real gateway: plain error lines, image arguments, tables and --json."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentserve.cli import build_parser
from serving.triton_server import free_ports
from tests.conftest import RunningGateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none").start()
    yield running
    running.stop()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentserve.cli", *args], capture_output=True, text=True, timeout=120)


def digits(directory: Path, count: int = 3) -> list[Path]:
    directory.mkdir(exist_ok=True)
    paths = [directory / f"digit-{i}.png" for i in range(count)]
    for i, path in enumerate(paths):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (28, 28), np.uint8)).save(path)
    return paths


def assert_error(result: subprocess.CompletedProcess, status: int, start: str) -> None:
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith(f"error: {start}") and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_server_error_is_one_line_with_its_code(gateway, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert_error(cli("classify", "--target", gateway.target, str(bad)), 1, "INVALID_ARGUMENT: images.encoded.images[0]")


def test_no_gateway_names_the_address_tried(tmp_path):
    (port,) = free_ports(1)
    result = cli("classify", "--target", f"127.0.0.1:{port}", "--connect-timeout", "0.5", *map(str, digits(tmp_path)))
    assert_error(result, 1, f"UNAVAILABLE: no gateway at 127.0.0.1:{port}")


def test_images_are_files_directories_or_globs(gateway, tmp_path):
    paths = digits(tmp_path / "digits")
    (tmp_path / "digits" / "notes.txt").write_text("a directory's other files are left out")
    for arguments in ([tmp_path / "digits"], [tmp_path / "digits" / "*.png"], paths):
        result = cli("classify", "--target", gateway.target, "--json", *map(str, arguments))
        assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == list(map(str, paths)), result.stderr


@pytest.mark.parametrize("argument, problem", [
    ("empty", "no PNG or JPEG files in this directory"),
    ("*.jpg", "no such file or directory, and no file matches it"),
    ("notes.txt", "not a PNG or JPEG file"),
])
def test_a_bad_image_argument_is_named_before_any_call(tmp_path, argument, problem):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("")
    assert_error(cli("classify", "--target", "127.0.0.1:1", str(tmp_path / argument)), 2, f"{tmp_path / argument}: {problem}")


def test_every_client_verb_prints_a_table_or_with_json_one_object_per_line(gateway, tmp_path):
    paths = digits(tmp_path / "digits")
    target = ["--target", gateway.target]

    def human(*args: str) -> list[str]:
        result = cli(*args, *target)
        assert result.returncode == 0 and not result.stdout.startswith("{"), result.stderr
        return result.stdout.splitlines()

    def records(*args: str) -> list[dict]:
        result = cli(*args, *target, "--json")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    assert human("models")[0].split() == ["model", "graph", "capability", "versions", "skipped"]
    assert "acgan" in {graph["model"] for graph in records("models")}
    assert {graph["model"] for graph in records("models", "acgan")} == {"acgan"}

    assert human("encode", str(tmp_path / "digits"))[0].split() == ["image", "model", "version", "bits", "num_bits", "code"]
    assert all(len(code["code"]) == 32 and code["model"] == "autoencoder" for code in records("encode", str(tmp_path / "digits")))

    table = human("classify", *map(str, paths))
    assert table[0].split() == ["image", "model", "version", "label", "confidence", "entropy"] and len(table) == 4
    assert all(0 <= row["label"] <= 9 for row in records("classify", *map(str, paths)))

    out = tmp_path / "out"
    assert len(human("translate", "--direction", "mnist2uci", "--out", str(out), *map(str, paths))) == 4
    translated = records("translate", "--direction", "mnist2uci", "--out", str(out), *map(str, paths))
    assert [row["out"] for row in translated] == [str(out / path.name) for path in paths] and all(p.is_file() for p in out.iterdir())

    assert human("index", "add", str(paths[0]), "--label", "3", "--meta", "who=cli") == ["added: 1"]
    assert records("index", "add", *map(str, paths[1:])) == [{"added": 2}]
    assert "items: 3" in human("index", "stats")
    assert records("index", "stats")[0]["items"] == 3
    assert human("search", "--id", "digit-1", "-k", "5")[0].split() == ["id", "distance", "label", "metadata"]
    hits = {hit["id"]: hit for hit in records("search", "--image", str(paths[0]), "-k", "5")}
    assert hits["digit-0"]["label"] == 3 and hits["digit-0"]["metadata"] == {"who": "cli"} and len(hits) == 3
    assert [hit["id"] for hit in records("search", "--id", "digit-1", "--filter", "label == 3")] == ["digit-0"]
    assert human("index", "delete", "digit-0") == ["deleted: 1"]
    assert records("index", "delete", "digit-1", "digit-2") == [{"deleted": 2}]

    assert records("index", "create", "kept", "--keep-images", "--version", "1")[0]["model"]["version"] == 1
    human("index", "add", *map(str, paths), "--collection", "kept")
    assert {"collection": "kept", "items": 3, "model": "autoencoder", "version": 1, "index": "exact", "keep_images": True} in records("index", "collections")
    rebuilt = records("index", "reindex", "--collection", "kept")[0]  # waits for the end
    assert rebuilt["model"]["version"] > 1 and rebuilt["items"] == 3 and rebuilt["reindex"] is None
    assert human("index", "drop", "kept") == []
    graph = records("index", "create", "graph", "--hnsw", "--m", "8")[0]
    assert graph["index"] == {"kind": "hnsw", "m": 8, "ef_search": 64, "nlist": 0, "nprobe": 0} and graph["approximate"] is True
    human("index", "drop", "graph")
    assert [c["collection"] for c in records("index", "collections")] == ["default"]

    assert human("generate", "--model", "acgan", "--count", "3", "--out", str(tmp_path / "job"))[0].split()[:2] == ["out", "model"]
    (job,) = records("generate", "--model", "acgan", "--count", "3", "--out", str(tmp_path / "job"), "--resume")
    assert job["count"] == 3 and job["version"] >= 1 and len(list((tmp_path / "job" / "images").iterdir())) == 3


def test_every_argument_of_every_verb_has_help():
    def without_help(parser: argparse.ArgumentParser) -> list[str]:
        found = [f"{parser.prog} {action.dest}" for action in parser._actions if action.help is None]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [name for sub in action.choices.values() for name in without_help(sub)]
        return found

    assert without_help(build_parser()) == []


def test_a_second_gateway_on_the_same_data_directory_exits_naming_the_holder(gateway):
    port, = free_ports(1)
    result = cli("serve", "--port", str(port), "--metrics-port", "0", "--gallery", "none",
                 "--data-dir", str(gateway.settings.data_dir), "--model-repository", str(gateway.settings.model_repository))
    assert result.returncode == 2, result.stderr
    assert f"error: the index at {gateway.settings.data_dir / 'index'} is in use by process" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "gateway.example"])
def test_serve_beyond_loopback_without_tls_and_tokens_refuses_to_start(host):
    result = cli("serve", "--host", host, "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: settings: listening on {host!r}, beyond loopback, needs TLS"), result.stderr
    assert "--insecure" in result.stderr


def test_index_cluster_groups_a_labelled_collection_by_digit(gateway, mnist, tmp_path):
    """K-means over 300 MNIST test digits' autoencoder codes agrees with their labels far above chance
    (for 10 balanced classes, chance purity is about 0.1-0.2 and chance NMI about 0.05)."""
    from latentserve.client import Client, Item

    with Client(gateway.target) as client:
        client.create_collection("digits")
        items = [Item(f"d{i}", image, int(label)) for i, (image, label) in enumerate(zip(mnist.test.images[:300], mnist.test.labels[:300]))]
        for start in range(0, 300, 100):
            client.add_items(items[start : start + 100], "digits")
    out = tmp_path / "clusters.csv"
    result = cli("index", "cluster", "--target", gateway.target, "--collection", "digits", "--clusters", "10", "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items"] == summary["labelled_items"] == 300 and sum(summary["sizes"]) == 300
    assert summary["purity"] > 0.5 and summary["nmi"] > 0.4
    rows = out.read_text().splitlines()
    assert rows[0] == "id,cluster,squared_distance" and len(rows) == 301
    assert {int(row.split(",")[1]) for row in rows[1:]} <= set(range(10))


def test_index_cluster_with_more_clusters_than_items_is_one_error_line(gateway):
    from latentserve.client import Client

    with Client(gateway.target) as client:
        client.create_collection("tiny")
    assert_error(cli("index", "cluster", "--target", gateway.target, "--collection", "tiny", "--clusters", "3"), 2, "0 items")
