"""Persistent progress of a procedure run, for resuming after a kill."""

from __future__ import annotations

__all__ = ("StateStore", "config_key")

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def config_key(instrument: str, config: Mapping[str, Any], simulation: Mapping[str, Any] | None = None) -> str:
    """Stable key of a run configuration (same config → same key)."""
    doc = {"instrument": instrument, "config": config, "simulation": simulation or {}}
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StateStore:
    """A small JSON document updated atomically after every step.

    Parameters
    ----------
    path
        JSON file (created with its directory when missing).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        if self.path.exists():
            self._data = json.loads(self.path.read_text())

    @property
    def resumed(self) -> bool:
        """Whether earlier progress was found."""
        return bool(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        """A stored value."""
        with self._lock:
            return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store a value and write the file atomically."""
        with self._lock:
            self._data[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
