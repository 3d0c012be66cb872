"""The active policy bundle: loaded at start, swapped on reload, every load on the record.

Each load writes an admin event carrying the bundle's hash and its validated content, so every
``policy_sha256`` a decision names can be resolved from the log itself, after the file changed.
A reload that fails validation keeps the previous bundle.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.errors import ConfigError
from service.lineage.events import record_event
from service.policies.bundle import load_bundle
from service.policies.engine import Engine

log = logging.getLogger("provenant.policies")

DEFAULT_BUNDLE = Path("policies/default.yaml")


def bundle_path(configured: Path | None) -> Path | None:
    """The bundle to load: the configured file (``none``: no policies), else
    ``policies/default.yaml`` if present."""
    if configured is not None:
        return None if str(configured) == "none" else configured
    return DEFAULT_BUNDLE if DEFAULT_BUNDLE.is_file() else None


def load_engine(path: Path | None) -> Engine | None:
    """Compile the bundle at ``path`` (None: no policies). Raises ConfigError if invalid."""
    return None if path is None else Engine(load_bundle(path))


class Policies:
    """Holds the engine the pipeline reads; reloads swap it atomically."""

    def __init__(self, path: Path | None, engine: Engine | None) -> None:
        self.path = path
        self.engine = engine
        self._lock = threading.Lock()

    @property
    def sha256(self) -> str | None:
        return None if self.engine is None else self.engine.sha256

    def summary(self) -> dict[str, Any]:
        """The active bundle: file, hash and policies."""
        engine = self.engine
        if engine is None:
            return {"bundle": None, "path": None, "sha256": None, "policies": []}
        return {
            "bundle": engine.bundle.bundle,
            "path": str(self.path),
            "sha256": engine.sha256,
            "description": engine.bundle.description,
            "policies": [
                {
                    "id": p.id,
                    "description": p.description,
                    "stage": p.stage.value,
                    "check": p.check.type,
                    "action": None if p.action is None else p.action.value,
                    "severity": p.severity,
                    "frameworks": list(p.frameworks),
                    "sha256": p.sha256,
                }
                for p in engine.bundle.policies
            ],
        }

    def record_loaded(self, sessions: sessionmaker[Session], *, actor: str) -> None:
        """Put the active bundle on the record (at start)."""
        if self.engine is None:
            return
        with sessions.begin() as session:
            record_event(
                session,
                actor=actor,
                action="policies.loaded",
                target=str(self.path),
                detail={"sha256": self.engine.sha256, "bundle": self._content()},
            )

    def reload(self, sessions: sessionmaker[Session], *, actor: str) -> dict[str, Any]:
        """Load the bundle file again; on success swap it in and record old and new hashes.

        Raises ConfigError (naming file, line and key) and keeps the current bundle if the file
        is invalid.
        """
        with self._lock:
            if self.path is None:
                raise ConfigError("no policy bundle is configured (PROVENANT_POLICY_BUNDLE)")
            new = load_engine(self.path)
            assert new is not None
            old_sha = self.sha256
            with sessions.begin() as session:
                record_event(
                    session,
                    actor=actor,
                    action="policies.reloaded",
                    target=str(self.path),
                    detail={
                        "old_sha256": old_sha,
                        "new_sha256": new.sha256,
                        "bundle": new.bundle.model_dump(mode="json"),
                    },
                )
            self.engine = new
            log.info("policy bundle reloaded: %s -> %s", old_sha, new.sha256)
            return {"old_sha256": old_sha, "new_sha256": new.sha256, "path": str(self.path)}

    def _content(self) -> dict[str, Any]:
        assert self.engine is not None
        return self.engine.bundle.model_dump(mode="json")
