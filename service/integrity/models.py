"""The append-only log: entries in order, the Merkle tree's stored nodes, signed checkpoints,
the public keys that signed them, and the entries written but not yet sealed."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, UTCDateTime


class LogPending(Base):
    """An entry committed with its record, waiting for the sealer to give it a log index."""

    __tablename__ = "log_pending"

    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "record" | "event"
    leaf_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LogEntry(Base):
    """Leaf ``idx`` of the log (RFC 6962 leaf order)."""

    __tablename__ = "log_entries"

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    leaf_sha256: Mapped[str] = mapped_column(String(64))


class TreeNode(Base):
    """The hash of the perfect subtree covering leaves [idx * 2**level, (idx + 1) * 2**level)."""

    __tablename__ = "tree_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class Checkpoint(Base):
    """A signed tree head in the C2SP tlog-checkpoint format (``note`` is the whole signed note)."""

    __tablename__ = "checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SigningKey(Base):
    """A public key that has signed checkpoints or receipts; kept after rotation."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)  # RFC 7638 thumbprint
    public_key: Mapped[str] = mapped_column(String(64))  # raw Ed25519 key, base64url
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
