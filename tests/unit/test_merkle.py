"""The Merkle code against the published RFC 6962 vectors, and against tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.integrity import merkle

V = json.loads((Path(__file__).parents[1] / "data" / "rfc6962_vectors.json").read_text())
LEAVES = [merkle.leaf_hash(bytes.fromhex(x)) for x in V["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(x) for x in V["roots_by_size_hex"]]


def hx(items: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in items]


def test_leaf_hashes_and_every_root_match_the_vectors() -> None:
    assert hx(V["leaf_hashes_hex"]) == LEAVES
    for size, expected in enumerate(ROOTS):
        assert merkle.root(LEAVES[:size]) == expected, size


@pytest.mark.parametrize("case", V["inclusion"], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_inclusion_proofs_match_and_verify(case: dict) -> None:
    index, size, proof = case["index"], case["size"], hx(case["proof"])
    assert merkle.inclusion_proof(index, LEAVES[:size]) == proof
    assert merkle.verify_inclusion(index, size, LEAVES[index], proof, ROOTS[size])


@pytest.mark.parametrize("case", V["inclusion"][1:], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_corrupted_inclusion_proofs_fail(case: dict) -> None:
    index, size, proof = case["index"], case["size"], hx(case["proof"])
    good_root, leaf = ROOTS[size], LEAVES[index]
    probes = [
        (index + 1, size, leaf, proof, good_root),
        (index ^ 2, size, leaf, proof, good_root),
        (index, size * 2, leaf, proof, good_root),
        (index, size // 2, leaf, proof, good_root),
        (index, size, merkle.leaf_hash(b"wrong"), proof, good_root),
        (index, size, leaf, proof, merkle.EMPTY_ROOT),
        (index, size, leaf, [*proof, good_root], good_root),
        (index, size, leaf, [good_root, *proof], good_root),
        (index, size, leaf, proof[:-1], good_root),
    ]
    if index > 0:
        probes.append((index - 1, size, leaf, proof, good_root))
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((index, size, leaf, flipped, good_root))
    for probe in probes:
        assert not merkle.verify_inclusion(*probe)


@pytest.mark.parametrize("case", V["consistency"], ids=lambda c: f"{c['size1']}-to-{c['size2']}")
def test_consistency_proofs_match_and_verify(case: dict) -> None:
    s1, s2, proof = case["size1"], case["size2"], hx(case["proof"])
    assert merkle.consistency_proof(s1, LEAVES[:s2]) == proof
    assert merkle.verify_consistency(s1, s2, proof, ROOTS[s1], ROOTS[s2])


@pytest.mark.parametrize(
    "case", V["consistency"][1:], ids=lambda c: f"{c['size1']}-to-{c['size2']}"
)
def test_corrupted_consistency_proofs_fail(case: dict) -> None:
    s1, s2, proof = case["size1"], case["size2"], hx(case["proof"])
    r1, r2 = ROOTS[s1], ROOTS[s2]
    probes = [
        (s1 - 1, s2, proof, r1, r2),
        (s1 + 1, s2, proof, r1, r2),
        (s1 ^ 2, s2, proof, r1, r2),
        (s1, s2 * 2, proof, r1, r2),
        (s1, s2 // 2, proof, r1, r2),
        (s1, s2, proof, merkle.EMPTY_ROOT, r2),
        (s1, s2, proof, r1, merkle.EMPTY_ROOT),
        (s1, s2, proof, r2, r1),
        (s1, s2, [], r1, r2),
        (s1, s2, [*proof, r1], r1, r2),
        (s1, s2, [r2, *proof], r1, r2),
        (s1, s2, proof[:-1], r1, r2),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        probes.append((s1, s2, flipped, r1, r2))
    for probe in probes:
        assert not merkle.verify_consistency(*probe)


def test_generated_proofs_verify_for_every_size_up_to_40() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(40)]
    roots = [merkle.root(leaves[:n]) for n in range(41)]
    for n in range(1, 41):
        for i in range(n):
            assert merkle.verify_inclusion(
                i, n, leaves[i], merkle.inclusion_proof(i, leaves[:n]), roots[n]
            )
        for m in range(0, n + 1):
            assert merkle.verify_consistency(
                m, n, merkle.consistency_proof(m, leaves[:n]), roots[m], roots[n]
            )


def test_compact_range_gives_every_root_and_stores_every_perfect_subtree() -> None:
    rng = merkle.CompactRange()
    nodes: dict[tuple[int, int], bytes] = {(0, i): leaf for i, leaf in enumerate(LEAVES)}
    for size, leaf in enumerate(LEAVES, start=1):
        for level, index, h in rng.append(leaf):
            nodes[(level, index)] = h
        assert rng.root() == ROOTS[size]
    # resuming from a stored border continues the same tree
    for size in range(len(LEAVES) + 1):
        border = [nodes[n] for n in merkle.CompactRange.border_of(size)]
        resumed = merkle.CompactRange(size, border)
        for leaf in LEAVES[size:]:
            resumed.append(leaf)
        assert resumed.root() == ROOTS[-1]

    # proofs over stored nodes equal proofs over the leaf list
    def mth(lo: int, hi: int) -> bytes:
        return merkle.fold(lo, hi, lambda level, index: nodes[(level, index)])

    for size in range(1, len(LEAVES) + 1):
        for index in range(size):
            assert merkle.inclusion_path(index, size, mth) == merkle.inclusion_proof(
                index, LEAVES[:size]
            )
        for old in range(size + 1):
            assert merkle.consistency_path(old, size, mth) == merkle.consistency_proof(
                old, LEAVES[:size]
            )
