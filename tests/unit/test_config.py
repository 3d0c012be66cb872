"""The routes file: valid files load, mistakes are named with the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import load_routes
from service.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_routes_file_loads() -> None:
    routes = load_routes(ROOT / "provenant.yaml").by_name()
    assert routes["demo-echo"].upstream == "http://127.0.0.1:8081/v1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("routes: [{name: a, kind: openai, upstream: ftp://x}]", "routes.0.openai.upstream"),
        ("routes: [{name: a, upstream: http://x, extra: 1}]", "extra"),
        ("routes: [{name: a, kind: warp, upstream: http://x}]", "routes.0"),
        ("routes: [{name: a, upstream: http://x}, {name: a, upstream: http://y}]", "duplicate"),
        ("routes: [{name: a, upstream: http://x, timeouts: {read: -1}}]", "timeouts.read"),
        ("routes: [", "invalid YAML"),
    ],
)
def test_bad_routes_files_name_the_problem(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    assert str(path) in info.value.message
    assert fragment in info.value.message


def test_missing_routes_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_routes(tmp_path / "nope.yaml")
