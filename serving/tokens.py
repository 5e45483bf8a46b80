"""The tokens file: the bearer tokens the gateway accepts (`latentserve token create | list | revoke`).

A JSON file, mode 0600, holding for each token its name, the SHA-256 of the token (never the token),
its scopes, when it was created and optionally its own quotas (null: the gateway's defaults; 0: none):

    {"tokens": [{"name": "ci", "sha256": "<64 hex digits>", "scopes": ["read"],
                 "created": "2025-01-01T12:00:00Z", "requests_per_second": null, "images_per_second": 50.0}]}

Every change writes a temporary file beside it and renames it over the old one, so a reader (the gateway
re-reads the file when it changes) sees the old file or the new one, never half of one.
"""
import hashlib
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from latentserve.files import write_atomically

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
TOKEN_BYTES = 32  # 256 random bits


class TokenError(Exception):
    """A tokens file that cannot be read, or a token command that cannot be done."""


class Token(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the token, hex")
    scopes: tuple[Scope, ...]
    created: datetime
    requests_per_second: float | None = Field(None, ge=0, description="null: the gateway's default for the call's scope; 0: unlimited")
    images_per_second: float | None = Field(None, ge=0, description="null: the gateway's default; 0: unlimited")


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[Token]

    @model_validator(mode="after")
    def _names_are_unique(self) -> "TokensFile":
        names = [token.name for token in self.tokens]
        if len(set(names)) < len(names):
            raise ValueError("two tokens share a name")
        return self


def hash_token(token: str) -> str:
    """SHA-256, unsalted and fast, is right here: the tokens are 256 random bits, so there is no dictionary
    to try and no point in a slow password hash; the hash only keeps a stolen file from being a key."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_tokens(path: Path) -> list[Token]:
    try:
        return TokensFile.model_validate_json(Path(path).read_bytes()).tokens
    except OSError as error:
        raise TokenError(f"tokens file {path}: {error.strerror}") from None
    except ValidationError as error:
        # the locations and messages only: pydantic's own text would quote the file's values, hashes included
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in error.errors())
        raise TokenError(f"tokens file {path} is malformed: {problems}") from None


def _write(path: Path, tokens: list[Token]) -> None:
    write_atomically(path, TokensFile(tokens=tokens).model_dump_json(indent=2) + "\n", mode=0o600)


def create(path: Path, name: str, scopes: list[str], requests_per_second: float | None = None,
           images_per_second: float | None = None) -> str:
    """Add a new token to the file (made if missing) and return it: the only time it exists outside the caller."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise TokenError(f"scopes must be one or more of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    tokens = read_tokens(path) if Path(path).exists() else []
    if any(token.name == name for token in tokens):
        raise TokenError(f"a token named {name!r} exists; revoke it first or choose another name")
    secret = secrets.token_urlsafe(TOKEN_BYTES)
    while secret.startswith("-"):  # `--token -abc` would read as an option
        secret = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        token = Token(name=name, sha256=hash_token(secret), scopes=tuple(dict.fromkeys(scopes)),
                      created=datetime.now(timezone.utc).replace(microsecond=0),
                      requests_per_second=requests_per_second, images_per_second=images_per_second)
    except ValidationError as error:
        raise TokenError("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in error.errors())) from None
    _write(path, [*tokens, token])
    return secret


def revoke(path: Path, name: str) -> None:
    tokens = read_tokens(path)
    kept = [token for token in tokens if token.name != name]
    if len(kept) == len(tokens):
        raise TokenError(f"no token named {name!r} in {path}")
    _write(path, kept)
