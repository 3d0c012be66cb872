"""The routes file: valid files load, mistakes are named with the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ExtractiveRoute, OpenAIRoute, load_routes
from service.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_routes_file_loads() -> None:
    routes = load_routes(ROOT / "provenant.yaml").by_name()
    echo = routes["demo-echo"]
    assert isinstance(echo, OpenAIRoute) and echo.upstream == "http://127.0.0.1:8081/v1"
    assistant = routes["handbook-assistant"]
    assert isinstance(assistant, ExtractiveRoute) and assistant.collection == "handbook"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("routes: [{name: a, kind: openai, upstream: ftp://x}]", "routes.0.openai.upstream"),
        ("routes: [{name: a, upstream: http://x, extra: 1}]", "extra"),
        ("routes: [{name: a, kind: warp, upstream: http://x}]", "routes.0"),
        ("routes: [{name: a, upstream: http://x}, {name: a, upstream: http://y}]", "duplicate"),
        ("routes: [{name: a, upstream: http://x, timeouts: {read: -1}}]", "timeouts.read"),
        ("routes: [", "invalid YAML"),
        ("routes: [{name: a, kind: rag, collection: hr, generator: nope}]", "generator"),
        (
            "routes: [{name: g, kind: extractive, collection: hr},"
            " {name: a, kind: rag, collection: hr, generator: g}]",
            "generator",
        ),
        ("routes: [{name: a, kind: rag, collection: 'HR docs'}]", "routes.0.rag.collection"),
        (
            "routes: [{name: a, kind: rag, collection: hr, prompt_template: 'no placeholder'}]",
            "{sources}",
        ),
        ("routes: [{name: a, kind: extractive, collection: hr, top_k: 0}]", "top_k"),
        ("routes: [{name: a, kind: rag-passthrough, upstream: http://x, bogus: 1}]", "bogus"),
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
