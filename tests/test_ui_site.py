"""The web page's files as the proxy serves them: paths, types, security headers, caching.

What the page does in a browser is tested in tests/ui/ (Chromium); here, what any HTTP
client sees, and that the vendored code is what scripts/vendor-ui.sh fetched.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from conftest import StartProxy, StartSims, group, make_settings
from identity import Site, auth_settings, bearer, start_site

from olbproxy.ui.site import STATIC

VENDOR = STATIC / "vendor"


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy) -> Site:
    return await start_site(start_sims, start_proxy, None, registration="invite")


async def test_the_page_is_served_without_credentials_and_root_stays_ollamas(
    site: Site,
) -> None:
    http = site.proxy.http
    async with http.get(site.url + "/ui", allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == "ui/"  # relative: survives a path prefix
    async with http.get(site.url + "/ui") as resp:
        assert resp.status == 200 and str(resp.url).endswith("/ui/")
        page = await resp.text()
    assert '<script type="module" src="app.js"></script>' in page
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    async with http.get(site.url + "/") as resp:
        assert await resp.text() == "Ollama is running"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/vendor/marked/marked.esm.js", "text/javascript; charset=utf-8"),
        ("/ui/vendor/dompurify/purify.es.mjs", "text/javascript; charset=utf-8"),
        ("/ui/vendor/dompurify/LICENSE", "text/plain; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ],
)
async def test_every_file_has_its_type_and_the_security_headers(
    site: Site, path: str, content_type: str
) -> None:
    async with site.proxy.http.get(site.url + path) as resp:
        assert resp.status == 200
        body = await resp.read()
        headers = resp.headers
    assert body == (STATIC / path.removeprefix("/ui/")).read_bytes()
    assert headers["Content-Type"] == content_type
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"


async def test_an_unchanged_file_answers_304(site: Site) -> None:
    async with site.proxy.http.get(site.url + "/ui/app.js") as resp:
        etag = resp.headers["ETag"]
        assert resp.headers["Cache-Control"] == "no-cache"
    async with site.proxy.http.get(site.url + "/ui/app.js", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
        assert await r.read() == b""


async def test_the_login_page_learns_the_registration_mode(site: Site) -> None:
    async with site.proxy.http.get(site.url + "/ui/config.json") as resp:
        assert await resp.json() == {
            "auth": True,
            "registration": "invite",
            "min_password_length": 8,
        }
    body = await resp.text()
    assert "invite_codes" not in body and "secret" not in body


async def test_nothing_under_ui_reaches_a_backend(site: Site) -> None:
    token = await site.user_with_token("kim")
    for path in ("/ui/nope.js", "/ui/vendor/marked/package.json", "/ui/api/tags"):
        for headers in ({}, bearer(token)):  # no route declares it: 404 for anyone
            async with site.proxy.http.get(site.url + path, headers=headers) as resp:
                assert resp.status == 404, path
                assert (await resp.json())["error"].startswith("404 page not found")
    assert [r.path for r in site.small.requests if r.path.startswith("/ui")] == []


async def test_with_auth_off_the_page_says_so(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1)
    proxy = await start_proxy(make_settings(group("all", ("*",), sims)))
    async with proxy.http.get(proxy.url + "/ui/config.json") as resp:
        assert (await resp.json())["auth"] is False
    settings = make_settings(group("all", ("*",), sims), auth=auth_settings(registration="closed"))
    proxy = await start_proxy(settings)
    async with proxy.http.get(proxy.url + "/ui/config.json") as resp:
        assert (await resp.json())["registration"] == "closed"


def test_vendored_code_is_what_the_vendor_script_recorded() -> None:
    """Nobody edits vendor/ by hand: every file is listed with its hash, and nothing else."""
    lines = (VENDOR / "VERSIONS").read_text().splitlines()
    packages = {line.split()[1]: line.split()[2] for line in lines if line.startswith("package ")}
    assert set(packages) == {"marked", "dompurify"}
    pinned = (Path(__file__).parent.parent / "scripts" / "vendor-ui.sh").read_text()
    assert f"MARKED_VERSION={packages['marked']}" in pinned
    assert f"DOMPURIFY_VERSION={packages['dompurify']}" in pinned
    listed = {}
    for line in lines:
        if line.startswith("sha256 "):
            _, digest, name = line.split(" ", 2)
            listed[name] = digest
    present = {
        p.relative_to(VENDOR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name != "VERSIONS"
    }
    assert present == listed
    for package in packages:
        assert any(name.startswith(f"{package}/LICENSE") for name in present), package


def test_both_languages_have_every_text() -> None:
    source = (STATIC / "i18n.js").read_text()
    english = source[source.index("  en: {") : source.index("  ko: {")]
    korean = source[source.index("  ko: {") : source.index("\n};")]
    key = re.compile(r"^\s{4}(\w+):", re.MULTILINE)
    assert set(key.findall(english)) == set(key.findall(korean))
    used = set()
    for script in STATIC.glob("*.js"):
        if script.name == "dom.js":  # the mechanism itself, not texts
            continue
        text = script.read_text()
        used |= set(re.findall(r"\b(?:t|tAria|tPlaceholder|tTitle): \[?\"(\w+)\"", text))
        used |= set(re.findall(r"(?:\bretext\([\w.]+,|\bsay\(|\bt\()\s*\"(\w+)\"", text))
    assert used, "the pattern finds the keys the scripts use"
    assert used - set(key.findall(english)) == set()
