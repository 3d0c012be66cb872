"""The auditor UI in a real browser (Debian's Chromium, headless, through Playwright): sign in
with an auditor key, filter the answers, open one, see its page-numbered source and its model
version, download a PDF report. A screenshot of each page goes to ``tests/artifacts/ui/``."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from tests.conftest import new_tenant
from tests.support.mlflow import MlflowServer, Registry
from tests.support.reports_seed import Seed, seeded_gateway
from tests.support.servers import UpstreamServer

CHROMIUM = os.environ.get("PROVENANT_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
XSS = "<script>alert('xss')</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'provenant.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def seed(
    sessions: sessionmaker[Session],
    upstream: UpstreamServer,
    registry: Registry,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Seed]:
    url = str(sessions.kw["bind"].url)
    keys = new_tenant(sessions)
    with seeded_gateway(
        url, tmp_path_factory.mktemp("ui-seed"), upstream, registry, mlflow_server.url, keys
    ) as seed:
        resp = httpx.post(
            f"{seed.gateway.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": XSS}], "user": "eve"},
            headers={"Authorization": f"Bearer {keys.app}"},
        )
        seed.ids["xss"] = resp.json()["provenance"]["audit_id"]
        yield seed


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is required at {CHROMIUM} (make test installs Debian's chromium)")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, seed: Seed, key: str) -> None:
    page.goto(f"{seed.gateway.url}/ui")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.fill("#key", key)
    page.click("button[type=submit]")


def test_an_auditor_signs_in_filters_opens_an_answer_and_downloads_a_pdf(
    seed: Seed, browser: Browser, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1366, "height": 800}, accept_downloads=True)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{seed.gateway.url}/ui")
    shot(page, "01-sign-in")
    sign_in(page, seed, seed.keys.auditor)
    expect(page).to_have_url(re.compile(r"/ui/answers$"))
    cookie = next(c for c in context.cookies() if c["name"] == "provenant_ui")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert seed.keys.auditor not in cookie["value"] and "pvn_" not in cookie["value"]
    expect(page.locator("table.list tbody tr")).to_have_count(8)
    shot(page, "02-answers")

    page.select_option("select[name=route]", "hr-rag")
    page.click("form.filters button[type=submit]")
    rows = page.locator("table.list tbody tr")
    expect(rows).to_have_count(2)
    shot(page, "03-answers-filtered")

    page.click(f"a[href='/ui/answers/{seed.ids['rag_v1']}']")
    expect(page.locator("h1")).to_contain_text("Answer")
    source = page.locator("li.source").first
    expect(source).to_contain_text("Leave policy")
    expect(source).to_contain_text("version 1")
    expect(source).to_contain_text("page 2")
    expect(source).to_contain_text("superseded since")
    expect(source.locator("blockquote.chunk")).to_contain_text("25 days of paid annual leave")
    expect(page.locator("body")).to_contain_text("verified")  # the inclusion proof
    shot(page, "04-answer-rag")

    page.goto(f"{seed.gateway.url}/ui/answers/{seed.ids['finetuned_1']}")
    lineage = page.locator("dl.facts").nth(1)
    expect(lineage).to_contain_text(f"version {seed.version.version}")
    expect(lineage).to_contain_text(seed.version.run_id)
    expect(lineage).to_contain_text("tickets-2026-10")
    shot(page, "05-answer-fine-tuned")

    page.goto(f"{seed.gateway.url}/ui/answers/{seed.ids['xss']}")
    expect(page.locator("pre.content").first).to_contain_text("<script>alert('xss')</script>")
    assert page.locator("img[src=x]").count() == 0 and not dialogs

    page.goto(f"{seed.gateway.url}/ui/documents")
    page.click("text=Leave policy")
    expect(page.locator("table.list tbody tr")).to_have_count(2)
    shot(page, "06-document-versions")

    until = seed.end.date() + timedelta(days=1)
    page.goto(f"{seed.gateway.url}/ui/reports?from={seed.start.date()}&to={until}")
    shot(page, "07-reports")
    with page.expect_download() as info:
        page.click("#report-activity a:text('PDF')")
    pdf = tmp_path / "activity.pdf"
    info.value.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF") and info.value.suggested_filename.endswith(".pdf")

    page.goto(f"{seed.gateway.url}/ui/integrity")
    expect(page.locator("body")).to_contain_text("Latest checkpoint")
    assert page.locator("span.badge.policy_blocked").count() == 0  # no failed check
    shot(page, "08-integrity")

    page.click("text=Sign out")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.goto(f"{seed.gateway.url}/ui/answers")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    context.close()


def test_only_auditor_and_admin_keys_sign_in_and_each_sees_only_its_tenant(
    seed: Seed, browser: Browser, sessions: sessionmaker[Session]
) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, seed, seed.keys.app)
    expect(page.locator(".alert")).to_contain_text("cannot sign in")
    sign_in(page, seed, "pvn_000000000000_not-a-key")
    expect(page.locator(".alert")).to_contain_text("invalid API key")
    other = new_tenant(sessions)
    sign_in(page, seed, other.auditor)
    expect(page).to_have_url(re.compile(r"/ui/answers$"))
    expect(page.locator("p.empty")).to_contain_text("No answers")
    response = page.goto(f"{seed.gateway.url}/ui/answers/{seed.ids['rag_v1']}")
    assert response is not None and response.status == 404
    context.close()
