"""`serve --ui`: a page to look at what the models do, on its own port (`ui_port`; 0: off).

A thin HTTP layer in the gateway process: it serves one page (serving/static/index.html) and turns the
page's JSON requests into calls to the gateway through the client library, on a Unix socket of the
gateway's that only this user can reach (so the same whether the public port has TLS or not), with the
bearer token the page sends. So the page has the API's tokens, scopes, quotas, limits and errors, and
nothing of its own. Views: a digit drawn or uploaded, with its class and confidence, its nearest
neighbours and its translations; sample grids from any generator (seed, class, truncation); and
interpolation strips.
"""
import base64
import functools
import io
import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from latentserve.client import Client, ServiceError

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"
MAX_BODY_BYTES = 1024 * 1024  # a drawn or uploaded digit's PNG, as a data URL
MAX_IMAGES = 64  # what one page request may ask a generator for
GALLERY_ID = re.compile(r"mnist-test-(\d{5})")
STATUSES = {  # gRPC status -> HTTP status of the page's request
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
}


class BadRequest(Exception):
    """A page request that is not what the page sends."""


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _png(pixels: np.ndarray) -> bytes:
    """(28, 28) floats in [0, 1] -> PNG."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image(value) -> bytes:
    """A data URL of a PNG or JPEG file, from the page."""
    if not isinstance(value, str) or not value.startswith("data:image/") or ";base64," not in value:
        raise BadRequest("image: send a data URL of a PNG or JPEG file")
    try:
        return base64.b64decode(value.split(";base64,", 1)[1], validate=True)
    except ValueError:
        raise BadRequest("image: not valid base64") from None


def _integer(body: dict, name: str, default: int | None = None, low: int = 0, high: int = 2**63 - 1) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"{name}: a whole number from {low} to {high}")
    return value


@functools.cache
def _gallery() -> np.ndarray:
    """The MNIST test images: the pictures of the default gallery's items (their ids say which)."""
    from latentserve.datasets import load_mnist

    return load_mnist().test.images


class Calls:
    """What each page request does, through one client of the gateway."""

    def __init__(self, client: Client):
        self.client = client

    @staticmethod
    def _thumbnail(item_id: str) -> str | None:
        found = GALLERY_ID.fullmatch(item_id)
        gallery = _gallery() if found else ()
        if not found or int(found.group(1)) >= len(gallery):
            return None
        return _data_url(_png(gallery[int(found.group(1))].reshape(28, 28)))

    def models(self, body: dict) -> dict:
        graphs = self.client.models()
        return {
            "generators": sorted({g.model for g in graphs if g.capability == "generate" and g.versions}),
            "directions": sorted({g.name for g in graphs if g.capability == "translate" and g.versions}),
            "density": any(g.capability == "density" and g.versions for g in graphs),
        }

    def look(self, body: dict) -> dict:
        """A digit: its class, whether it is like the training data (where a density model is served),
        nearest neighbours and translations."""
        image = _image(body.get("image"))
        k = _integer(body, "k", 8, 1, 32)
        served = self.models({})
        classes = self.client.classify([image], check_distribution=served["density"])
        hits = self.client.search(image, k=k)
        translations = []
        for direction in served["directions"]:
            try:
                translated = self.client.translate([image], direction, png=True)
            except ServiceError as error:  # a direction whose input is not a digit of this size
                translations.append({"direction": direction, "error": str(error)})
            else:
                translations.append({"direction": direction, "image": _data_url(translated.png[0]), "model": translated.model.name})
        return {
            "label": int(classes.labels[0]), "confidence": float(classes.confidences[0]),
            "probabilities": classes.probabilities[0].tolist(), "classifier": classes.model.name,
            "distribution": None if classes.distribution is None else {
                "score": float(classes.distribution.scores[0]), "threshold": classes.distribution.threshold,
                "out_of_distribution": bool(classes.distribution.out_of_distribution[0]), "model": classes.distribution.model.name,
            },
            "neighbours": [{"id": hit.id, "distance": hit.distance, "label": hit.label, "image": self._thumbnail(hit.id)} for hit in hits],
            "translations": translations,
        }

    def generate(self, body: dict) -> dict:
        count = _integer(body, "count", 16, 1, MAX_IMAGES)
        label = _integer(body, "label", None, 0, 9)
        truncation = body.get("truncation")
        if truncation is not None and not isinstance(truncation, (int, float)):
            raise BadRequest("truncation: a number")
        images = self.client.generate(count, model=str(body.get("model", "")), seed=_integer(body, "seed", 0),
                                      labels=None if label is None else [label] * count, truncation=truncation, png=True)
        return {"model": images.model.name, "version": images.model.version, "images": [_data_url(png) for png in images.png]}

    def interpolate(self, body: dict) -> dict:
        images = self.client.interpolate(
            _integer(body, "start", 0), _integer(body, "end", 1), _integer(body, "steps", 8, 2, MAX_IMAGES), model=str(body.get("model", "")),
            spherical=bool(body.get("spherical", True)), label=_integer(body, "label", None, 0, 9), png=True,
        )
        return {"model": images.model.name, "version": images.model.version, "images": [_data_url(png) for png in images.png]}


class _Handler(BaseHTTPRequestHandler):
    server: "UiServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("ui %s: " + format, self.address_string(), *args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        name = self.path.removeprefix("/api/")
        call = getattr(Calls, name, None) if name in ("models", "look", "generate", "interpolate") else None
        if call is None:
            return self._send(HTTPStatus.NOT_FOUND, b'{"error": "no such call"}', "application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, json.dumps({"error": f"over {MAX_BODY_BYTES} bytes"}).encode(), "application/json")
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("send a JSON object")
            with Client(self.server.target, token=token if scheme.lower() == "bearer" else None, timeout=60) as client:
                result = call(Calls(client), body)
        except (BadRequest, json.JSONDecodeError) as error:
            return self._send(HTTPStatus.BAD_REQUEST, json.dumps({"error": str(error)}).encode(), "application/json")
        except ServiceError as error:
            status = STATUSES.get(error.code, HTTPStatus.SERVICE_UNAVAILABLE)
            return self._send(status, json.dumps({"error": str(error), "field": error.field}).encode(), "application/json")
        self._send(HTTPStatus.OK, json.dumps(result).encode(), "application/json")


class UiServer(ThreadingHTTPServer):
    """The page on `host`:`port`, calling the gateway at `target`; `start` runs it on a thread of its own."""

    daemon_threads = True

    def __init__(self, host: str, port: int, target: str):
        super().__init__((host, port), _Handler)
        self.target = target
        self.thread = threading.Thread(target=self.serve_forever, name="ui", daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> "UiServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(10)
