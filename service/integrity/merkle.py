"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and proof verification.

Written from the RFC's definitions (§2.1) rather than taken from a library: the Python packages
that implement CT proofs are unmaintained, and this is ~100 lines checked against the published
test vectors (tests/data/rfc6962_vectors.json).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

# MTH(D[lo:hi]) for some stored tree: lets the proofs run over a database as over a list
RangeHash = Callable[[int, int], bytes]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """HASH(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, computed level by level (an unpaired node moves up unchanged)."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of one leaf."""
    return inclusion_path(index, len(leaves), lambda lo, hi: root(leaves[lo:hi]))


def consistency_proof(size1: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(size1, D[n]): shows the tree of ``size1`` leaves is a prefix of this one."""
    return consistency_path(size1, len(leaves), lambda lo, hi: root(leaves[lo:hi]))


def inclusion_path(index: int, size: int, mth: RangeHash) -> list[bytes]:
    """PATH(index, D[size]) from any source of subtree hashes (RFC 9162 §2.1.3.1)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _path(index, 0, size, mth)


def _path(index: int, lo: int, hi: int, mth: RangeHash) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if index < lo + k:
        return [*_path(index, lo, lo + k, mth), mth(lo + k, hi)]
    return [*_path(index, lo + k, hi, mth), mth(lo, lo + k)]


def consistency_path(size1: int, size2: int, mth: RangeHash) -> list[bytes]:
    """PROOF(size1, D[size2]) from any source of subtree hashes (RFC 9162 §2.1.4.1)."""
    if not 0 <= size1 <= size2:
        raise ValueError(f"size {size1} is not within a tree of size {size2}")
    if size1 in (0, size2):
        return []
    return _subproof(size1, 0, size2, True, mth)


def _subproof(m: int, lo: int, hi: int, complete: bool, mth: RangeHash) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if complete else [mth(lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, lo, lo + k, complete, mth), mth(lo + k, hi)]
    return [*_subproof(m - k, lo + k, hi, False, mth), mth(lo, lo + k)]


def fold(lo: int, hi: int, node: Callable[[int, int], bytes]) -> bytes:
    """MTH(D[lo:hi]) given ``node(level, index)``, the hash of a perfect subtree."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        return node(n.bit_length() - 1, lo // n)
    k = _split(n)
    return node_hash(fold(lo, lo + k, node), fold(lo + k, hi, node))


class CompactRange:
    """The right border of a growing tree (one perfect subtree per set bit of its size):
    appends leaves in O(1) amortised and yields the root at any size, as a sealer or a
    verifier streaming a million leaves needs."""

    def __init__(self, size: int = 0, border: Sequence[bytes] = ()) -> None:
        if len(border) != bin(size).count("1"):
            raise ValueError("a border has one hash per set bit of the size")
        self.size = size
        self._levels = [lvl for lvl in range(size.bit_length() - 1, -1, -1) if size >> lvl & 1]
        self._hashes = list(border)

    @staticmethod
    def border_of(size: int) -> list[tuple[int, int]]:
        """The (level, index) of the perfect subtrees making up [0, size), largest first."""
        out, offset = [], 0
        for lvl in range(size.bit_length() - 1, -1, -1):
            if size >> lvl & 1:
                out.append((lvl, offset >> lvl))
                offset += 1 << lvl
        return out

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the inner nodes (level >= 1, index, hash) it completed."""
        made: list[tuple[int, int, bytes]] = []
        level, h, index = 0, leaf, self.size
        while self._levels and self._levels[-1] == level:
            self._levels.pop()
            h = node_hash(self._hashes.pop(), h)
            level += 1
            index >>= 1
            made.append((level, index, h))
        self._levels.append(level)
        self._hashes.append(h)
        self.size += 1
        return made

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            r = node_hash(h, r)
        return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` place ``leaf`` at ``index`` under ``expected_root``?"""
    if not 0 <= index < size or len(leaf) != 32:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0 or len(p) != 32:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (size1, root1) a prefix of the tree (size2, root2)?"""
    if not 0 <= size1 <= size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof
    if not proof or any(len(p) != 32 for p in proof):
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2
