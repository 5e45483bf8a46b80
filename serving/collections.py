"""The named collections of a data directory, each a CodeIndex of its own: "default" (the gallery's) in
`index/`, where the index lived before collections, and the others in `collections/<name>/`.

Creating one writes its binding in the first transaction of its store: a directory without one is a
creation that did not finish, removed on the next start. Dropping one renames its directory out of the
way before deleting it, so a crash mid-drop never leaves half a collection behind.
"""
import logging
import re
import shutil
import threading
import uuid
from pathlib import Path

from serving.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from serving.index import Binding, CodeIndex, IndexOptions

log = logging.getLogger(__name__)
DEFAULT = "default"
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DROPPED = ".dropped-"  # prefix of a directory being deleted


def collection_name(name: str, field: str) -> str:
    """The collection a request names ("" is the default), checked."""
    if not name:
        return DEFAULT
    if not NAME.fullmatch(name):
        raise InvalidArgument("letters, digits, '_' and '-', 1 to 64 of them", field)
    return name


class Collections:
    def __init__(self, data_dir: Path):
        self._root = data_dir / "collections"
        self._default_dir = data_dir / "index"
        self._open: dict[str, CodeIndex] = {}
        self._lock = threading.Lock()  # create and drop against each other

    def open(self, default_binding: Binding) -> None:
        """Open the default collection (created for `default_binding` if new) and every other one."""
        self._open[DEFAULT] = CodeIndex(self._default_dir, default_binding)
        self._root.mkdir(parents=True, exist_ok=True)
        for directory in sorted(self._root.iterdir()):
            if directory.name.startswith(DROPPED):
                shutil.rmtree(directory)
            elif directory.is_dir():
                try:
                    self._open[directory.name] = CodeIndex(directory, None)
                except FailedPrecondition:
                    log.warning("removing collection %s: its creation did not finish", directory.name)
                    shutil.rmtree(directory)

    def get(self, name: str) -> CodeIndex:
        try:
            return self._open[name]
        except KeyError:
            raise NotFound("no such collection", "collection") from None

    def names(self) -> list[str]:
        return sorted(self._open)

    def create(self, name: str, binding: Binding, options: IndexOptions) -> CodeIndex:
        with self._lock:
            if name in self._open:
                raise AlreadyExists("a collection of this name exists", "name")
            index = CodeIndex(self._root / name, binding, options)
            self._open[name] = index
            return index

    def drop(self, name: str) -> None:
        if name == DEFAULT:
            raise FailedPrecondition("the default collection cannot be dropped; delete its items instead")
        with self._lock:
            index = self.get(name)
            del self._open[name]  # new calls get NOT_FOUND; calls holding it get NOT_FOUND once it is closed
            index.close()
            gone = self._root / f"{DROPPED}{name}-{uuid.uuid4().hex}"
            (self._root / name).rename(gone)
            shutil.rmtree(gone)

    def close(self) -> None:
        for index in self._open.values():
            index.close()
