"""The console's files as the gateway serves them (services/gateway/console.py), in-process;
the console itself in a browser is tests/integration/browser."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.gateway.console import CONSOLE_DIR, CONTENT_SECURITY_POLICY, mount_console


def client() -> TestClient:
    app = FastAPI()
    mount_console(app)
    return TestClient(app)


def test_the_page_is_served_at_console_and_console_slash_with_its_policy() -> None:
    http = client()
    for path in ("/console", "/console/"):
        page = http.get(path, follow_redirects=False)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "/console/js/app.js" in page.text


def test_every_file_gets_the_policy_and_a_missing_one_is_404() -> None:
    http = client()
    script = http.get("/console/js/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert http.get("/console/console.css").headers["content-type"].startswith("text/css")
    missing = http.get("/console/js/nothing.js")
    assert missing.status_code == 404
    assert missing.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert missing.json() == {"detail": "Not Found"}


def test_the_policy_allows_no_other_origin_and_no_inline_code() -> None:
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    for forbidden in ("http:", "https:", "*", "unsafe-inline", "unsafe-eval"):
        assert forbidden not in CONTENT_SECURITY_POLICY


def test_the_files_load_nothing_from_elsewhere_and_write_no_html() -> None:
    """No CDN, no inline script or style (the policy would block them), and values from the
    API are never written as HTML."""
    files = [*CONSOLE_DIR.rglob("*.js"), *CONSOLE_DIR.rglob("*.html"), *CONSOLE_DIR.rglob("*.css")]
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path
        assert "@import" not in text and "url(http" not in text, path
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, path
        assert not re.search(r"\beval\(|new Function", text), path
    index = (CONSOLE_DIR / "index.html").read_text()
    assert "<style" not in index and "style=" not in index
    assert re.findall(r"<script[^>]*>", index) == [
        '<script type="module" src="/console/js/app.js">'
    ]
