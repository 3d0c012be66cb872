"""Pure pieces of model lineage: the routes file's registry block, URIs without credentials,
and the record leaf's compatibility with records that have no registry link."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service.config import load_routes
from service.errors import ConfigError
from service.integrity import leaf
from service.lineage.models import RecordStatus
from service.lineage.records import Exchange
from service.provenance.registry import redact_uri, scrub_text
from service.tenancy.auth import Principal
from service.tenancy.models import Role


def test_a_registry_block_loads_with_its_defaults_and_mapping(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n"
        "  - name: bot\n    upstream: http://u/v1\n    upstream_model_from: tag:serving_name\n"
        "    registry:\n      model: support-bot\n      version: 7\n"
        "      fields: {base_model: [param:foundation, run_tag:base]}\n"
    )
    route = load_routes(path).by_name()["bot"]
    link = route.registry
    assert link is not None and (link.version, link.alias) == ("7", None)
    assert link.sources("base_model") == ("param:foundation", "run_tag:base")
    assert link.sources("adapter")[0] == "tag:adapter_name"
    assert link.beyond_max_staleness == "fail"
    assert link.cache_ttl_s is None and link.tracking_uri is None


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        ("registry: {model: m}", "exactly one of alias or version"),
        ("registry: {model: m, alias: a, version: 2}", "exactly one of alias or version"),
        ("registry: {model: m, version: v2}", "registry.version"),
        ("upstream_model_from: tag:x", "needs a registry"),
        ("upstream_model_from: label:x\n    registry: {model: m, alias: a}", "upstream_model_from"),
        (
            "upstream_model: a\n    upstream_model_from: tag:x\n    registry: {model: m, alias: p}",
            "not both",
        ),
        ("registry: {model: m, alias: a, fields: {base_model: [x]}}", "not tag:X"),
        ("registry: {model: m, alias: a, fields: {colour: [tag:c]}}", "fields.colour"),
        ("registry: {model: m, alias: a, beyond_max_staleness: shrug}", "beyond_max_staleness"),
        ("registry: {model: m, alias: a, cache_ttl_s: 0}", "cache_ttl_s"),
    ],
)
def test_registry_mistakes_are_named(tmp_path: Path, route: str, fragment: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(f"routes:\n  - name: r\n    upstream: http://u/v1\n    {route}\n")
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("sqlite:///./data/mlflow.db", "sqlite:///./data/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://svc:s3cret@mlflow.example/api", "https://mlflow.example/api"),
        ("https://mlflow.example/?token=s3cret&workspace=a", "https://mlflow.example/?workspace=a"),
        ("postgresql://ml:s3cret@db:5432/mlflow", "postgresql://db:5432/mlflow"),
        ("databricks", "databricks"),
    ],
)
def test_uris_are_shown_without_credentials(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_credentials_are_scrubbed_from_error_messages() -> None:
    message = "API request to https://svc:s3cret@mlflow.example/api/2.0 failed"
    assert scrub_text(message) == "API request to https://mlflow.example/api/2.0 failed"


def _exchange() -> Exchange:
    principal = Principal(uuid.uuid4(), "pvn_x", uuid.uuid4(), "t", Role.app)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return Exchange(principal, "m", "openai", body, "m")


def test_the_stale_flag_is_in_the_leaf_only_for_registry_linked_records() -> None:
    ex = _exchange()
    row = ex.record_row(status=RecordStatus.ok, http_status=200, latency_ms=1.0)
    doc = leaf.record_document(row)
    assert row["lineage_stale"] is None and "lineage_stale" not in doc  # leaves as before

    ex.model_snapshot_sha256, ex.lineage_stale = "ab" * 32, True
    stale = ex.record_row(status=RecordStatus.ok, http_status=200, latency_ms=1.0)
    doc = leaf.record_document(stale, snapshot_sha256=ex.model_snapshot_sha256)
    assert doc["lineage_stale"] is True
    flipped = leaf.record_document({**stale, "lineage_stale": False}, snapshot_sha256="ab" * 32)
    assert leaf.leaf_sha256(doc) != leaf.leaf_sha256(flipped)
