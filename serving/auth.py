"""Who may call the gateway, what, and how often; and the audit log of the calls that change state.

Clients send `authorization: Bearer <token>` metadata with every call to a latentserve service; the token
is looked up in the tokens file (serving/tokens.py), which the gateway re-reads when it changes, so a
revocation takes effect without a restart. Scopes are independent: a token may make exactly the calls of
the scopes it holds (`read`, `write`, `admin`), none is implied by another. Health and reflection are
open. With no tokens file configured nobody is asked for a token, and there are no quotas.
"""
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import grpc

from latentserve.v1 import common_pb2
from serving.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from serving.settings import Settings
from serving.tokens import Scope, Token, TokenError, hash_token, read_tokens

log = logging.getLogger(__name__)
audit_log = logging.getLogger("latentserve.audit")

# every method under these needs a rule in RULES (ours, and the Open Inference Protocol's); grpc's health
# and reflection do not
GUARDED = ("/latentserve.", "/inference.GRPCInferenceService/")
NO_VALID_TOKEN = "a valid bearer token is required (metadata 'authorization: Bearer TOKEN')"


def _batch(images: common_pb2.Images) -> int:
    if images.HasField("encoded"):
        return len(images.encoded.images)
    return images.tensor.shape[0] if images.tensor.shape else 0


def _infer_batch(request) -> int:
    """A ModelInfer's images: its first input's batch size."""
    return request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 0


def _none(request) -> int:
    return 0


@dataclass(frozen=True)
class Rule:
    """What a call needs (a scope) and what it counts: images against the images quota, and the items a
    write names for the audit log."""
    scope: Scope
    images: Callable[[object], int] = _none
    items: Callable[[object], int] = _none


RULES: dict[str, Rule] = {
    "/latentserve.v1.Models/ListModels": Rule("read"),
    "/latentserve.v1.Models/GetModel": Rule("read"),
    "/latentserve.v1.Encoder/Encode": Rule("read", images=lambda request: _batch(request.images)),
    "/latentserve.v1.Search/Search": Rule("read", images=lambda request: int(request.HasField("image"))),
    "/latentserve.v1.Search/SearchBatch": Rule("read", images=lambda request: sum(query.HasField("image") for query in request.queries)),
    "/latentserve.v1.Search/GetItems": Rule("read"),
    "/latentserve.v1.Search/ListItems": Rule("read"),
    "/latentserve.v1.Search/GetIndexStats": Rule("read"),
    "/latentserve.v1.Search/ListCollections": Rule("read"),
    "/latentserve.v1.Search/PropagateLabels": Rule("read"),
    "/latentserve.v1.Search/AddItems": Rule("write", images=lambda request: len(request.items), items=lambda request: len(request.items)),
    "/latentserve.v1.Search/UpsertItems": Rule("write", images=lambda request: len(request.items), items=lambda request: len(request.items)),
    "/latentserve.v1.Search/DeleteItems": Rule("write", items=lambda request: len(request.ids)),
    "/latentserve.v1.Search/CreateCollection": Rule("admin"),
    "/latentserve.v1.Search/DropCollection": Rule("admin"),
    "/latentserve.v1.Search/ReindexCollection": Rule("admin"),
    "/latentserve.v1.Generator/Generate": Rule(
        "read", images=lambda request: request.count or (request.latents.shape[0] if request.latents.shape else 0)
    ),
    "/latentserve.v1.Generator/Interpolate": Rule("read", images=lambda request: request.steps),
    "/latentserve.v1.Generator/GenerateStream": Rule("read", images=lambda request: request.count),
    "/latentserve.v1.Classifier/Classify": Rule("read", images=lambda request: _batch(request.images)),
    "/latentserve.v1.Density/Score": Rule("read", images=lambda request: _batch(request.images)),
    "/latentserve.v1.Translator/Translate": Rule("read", images=lambda request: _batch(request.images)),
    "/latentserve.v1.Translator/ListDirections": Rule("read"),
    # The Open Inference Protocol (serving/open_inference.py): the methods it does not serve answer UNIMPLEMENTED
    **{f"/inference.GRPCInferenceService/{method}": Rule("read") for method in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "SystemSharedMemoryStatus", "CudaSharedMemoryStatus", "TraceSetting", "LogSettings",
    )},
    "/inference.GRPCInferenceService/ModelInfer": Rule("read", images=lambda request: _infer_batch(request)),
    **{f"/inference.GRPCInferenceService/{method}": Rule("admin") for method in (
        "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
        "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
    )},
    "/inference.GRPCInferenceService/ModelStreamInfer": Rule("read"),
}


class TokenStore:
    """The tokens file, re-read when it changes: each lookup compares the file's inode, mtime and size
    with those last read (one stat). A file that turns missing or malformed is logged and refuses every
    token until it is fixed: a revocation is never lost to a broken file."""

    def __init__(self, path: Path):
        self.path = path
        self.stamp = self._stamp()
        self.tokens = read_tokens(path)  # TokenError here stops the gateway from starting

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        stamp = self._stamp()
        if stamp == self.stamp:
            return
        self.stamp = stamp
        try:
            self.tokens = read_tokens(self.path)
        except TokenError as error:
            self.tokens = []
            log.error("%s; every token is refused until it is fixed", error)
        else:
            log.info("re-read tokens file %s: %d tokens", self.path, len(self.tokens))

    def find(self, presented: str) -> Token | None:
        """The stored token whose hash matches, compared in constant time against every stored hash."""
        self._refresh()
        digest = hash_token(presented)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.sha256, digest):
                found = token
        return found


class TokenBucket:
    """`rate` units a second, holding at most one second's worth (at least 1). A request for n units is let
    through once the bucket holds min(n, capacity), and may leave it in debt: so a request larger than
    one second's worth is not refused forever, and the calls after it wait until the average is back."""

    def __init__(self, rate: float, now: float):
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.level = self.capacity
        self.time = now

    def delay(self, amount: int, now: float) -> float:
        """Seconds until `amount` can be taken; 0 if it can be now."""
        self.level = min(self.capacity, self.level + (now - self.time) * self.rate)
        self.time = now
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def take(self, amount: int) -> None:
        self.level -= amount


class Guard:
    """Authentication, scopes and quotas for each call (ErrorsAndMetrics asks before running it), and the
    audit line after each write."""

    def __init__(self, settings: Settings):
        self.tokens = TokenStore(settings.tokens_file) if settings.tokens_file else None
        self.requests_per_second = {
            "read": settings.quota_read_requests_per_second,
            "write": settings.quota_write_requests_per_second,
            "admin": settings.quota_write_requests_per_second,
        }
        self.images_per_second = settings.quota_images_per_second
        # what a call can charge at most: a count beyond the limits is refused by the call itself, and must not
        # first put the token's bucket in debt
        self.max_images = {"/latentserve.v1.Generator/GenerateStream": settings.max_stream_images}
        self.max_batch_images = settings.max_batch_images
        self.buckets: dict[tuple[str, str, float], TokenBucket] = {}

    def authenticate(self, method: str, metadata) -> Token | None:
        """The caller's token; None outside latentserve's services or with no tokens file configured. No
        token, an unknown one and a revoked one are refused alike."""
        if self.tokens is None or not method.startswith(GUARDED):
            return None
        scheme, _, presented = dict(metadata or ()).get("authorization", "").partition(" ")
        token = self.tokens.find(presented) if scheme.lower() == "bearer" else None
        if token is None:
            raise Unauthenticated(NO_VALID_TOKEN)
        return token

    def authorize(self, method: str, token: Token | None, request) -> None:
        """Refuse a latentserve method missing from RULES (always: fail closed), a token without the call's
        scope, or a call over the token's quotas."""
        if not method.startswith(GUARDED):
            return
        rule = RULES.get(method)
        if rule is None:
            raise PermissionDenied(f"{method} has no scope in serving/auth.py RULES; it is refused")
        if token is None:
            return
        if rule.scope not in token.scopes:
            raise PermissionDenied(f"this call needs a token with scope '{rule.scope}'")
        self._charge(token, rule, min(max(0, rule.images(request)), self.max_images.get(method, self.max_batch_images)))

    def _charge(self, token: Token, rule: Rule, images: int) -> None:
        """Take one request and the call's images from the token's buckets, or neither."""
        requests_rate = self.requests_per_second[rule.scope] if token.requests_per_second is None else token.requests_per_second
        images_rate = self.images_per_second if token.images_per_second is None else token.images_per_second
        now = time.monotonic()
        taken = []
        for kind, rate, amount in [(f"{rule.scope} requests", requests_rate, 1), ("images", images_rate, images)]:
            if rate and amount:
                bucket = self.buckets.setdefault((token.name, kind, rate), TokenBucket(rate, now))
                delay = bucket.delay(amount, now)
                if delay:
                    raise ResourceExhausted(f"over this token's quota of {rate:g} {kind} a second", retry_after=delay)
                taken.append((bucket, amount))
        for bucket, amount in taken:
            bucket.take(amount)

    def audit(self, method: str, token: Token | None, request, code: grpc.StatusCode) -> None:
        """One JSON line on the `latentserve.audit` logger for each call that changes state, refused ones too."""
        rule = RULES.get(method)
        if rule is None or rule.scope == "read":
            return
        audit_log.info(json.dumps({
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "token": token.name if token else "-",
            "rpc": method,
            "items": rule.items(request),
            "status": code.name,
        }))
