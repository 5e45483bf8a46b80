"""The named collections of a data directory, each a CodeIndex of its own directory.

`collections/aliases.json` maps each name to its directory under `collections/`; "default" is `index/`
(where the index lived before collections) until a reindex moves it. The file is replaced atomically, so
it is the commit point of every change: a directory it does not name (a creation, drop or rebuild that a
crash cut short) is removed at the next start, and a reindex switches a name to its new directory in one
step, with no moment at which the name is missing or half built.
"""
import json
import logging
import re
import shutil
import threading
import uuid
from pathlib import Path

from latentserve.files import remove_partial_writes, write_atomically
from serving.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from serving.index import Binding, CodeIndex, IndexOptions

log = logging.getLogger(__name__)
DEFAULT = "default"
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        self._legacy_default = data_dir / "index"
        self._aliases: dict[str, str] = {}  # name -> directory under _root
        self._open: dict[str, CodeIndex] = {}
        self._lock = threading.Lock()  # changes to the names against each other

    def open(self, default_binding: Binding) -> None:
        """Open the default collection (created for `default_binding` if new) and every other one; remove
        the directories no name points to and the temporary files of alias writes a stop cut short."""
        self._root.mkdir(parents=True, exist_ok=True)
        if removed := remove_partial_writes(self._root):
            log.warning("removed %d temporary files of alias writes cut short by a stop", removed)
        aliases_file = self._root / "aliases.json"
        self._aliases = json.loads(aliases_file.read_text()) if aliases_file.is_file() else {}
        self._open[DEFAULT] = CodeIndex(self._directory(DEFAULT), default_binding)
        for name in self._aliases:
            if name != DEFAULT:
                self._open[name] = CodeIndex(self._directory(name), None)
        for directory in self._root.iterdir():
            if directory.is_dir() and directory.name not in self._aliases.values():
                log.warning("removing %s: no collection points to it (cut short by a stop)", directory)
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
            directory, index = self.build(name, binding, options)
            self._save_aliases({**self._aliases, name: directory})
            self._open[name] = index
            return index

    def build(self, name: str, binding: Binding, options: IndexOptions) -> tuple[str, CodeIndex]:
        """A new, empty index in a directory of its own, not yet named: (directory, index)."""
        directory = f"{name}-{uuid.uuid4().hex[:12]}"
        return directory, CodeIndex(self._root / directory, binding, options)

    def switch(self, name: str, directory: str, index: CodeIndex) -> None:
        """Point `name` at `index` (made by `build`, in `directory`), and delete what it pointed to."""
        with self._lock:
            old, old_directory = self.get(name), self._directory(name)
            self._save_aliases({**self._aliases, name: directory})
            self._open[name] = index  # calls from now on; calls holding the old one get NOT_FOUND once it closes
            old.close()
            shutil.rmtree(old_directory)

    def discard(self, directory: str, index: CodeIndex) -> None:
        """Delete an index made by `build` that will not be switched to."""
        index.close()
        shutil.rmtree(self._root / directory)

    def drop(self, name: str) -> None:
        if name == DEFAULT:
            raise FailedPrecondition("the default collection cannot be dropped; delete its items instead")
        with self._lock:
            index, directory = self.get(name), self._directory(name)
            self._save_aliases({alias: target for alias, target in self._aliases.items() if alias != name})
            del self._open[name]
            index.close()
            shutil.rmtree(directory)

    def close(self) -> None:
        for index in self._open.values():
            index.close()

    def _directory(self, name: str) -> Path:
        if name == DEFAULT and DEFAULT not in self._aliases:
            return self._legacy_default
        return self._root / self._aliases[name]

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        write_atomically(self._root / "aliases.json", json.dumps(aliases))
        self._aliases = aliases
