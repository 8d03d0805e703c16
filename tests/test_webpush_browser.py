"""The subscribe page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

No browser push service is reachable here, so a real `pushManager.subscribe()` must fail; the
page has to say so clearly instead of hanging. Screenshots go to tests/output/ for a human look.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from bot.store import Store
from channels.webpush import PushHttpServer, SubscriptionStore, Topic, WebPushSection, b64url
from tests.fake_push import FakePushService

pytestmark = pytest.mark.e2e  # headless Chromium

OUTPUT = Path(__file__).parent / "output"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


@dataclass
class Site:
    server: PushHttpServer
    subs: SubscriptionStore
    push: FakePushService
    browser: Browser

    @property
    def url(self) -> str:
        return self.server.public_url

    @property
    def origin(self) -> str:
        return self.url.rsplit("/push/", 1)[0]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    store = Store(f"sqlite:///{tmp_path / 'siar.db'}")
    await store.migrate()
    section = WebPushSection(
        listen="127.0.0.1:0",
        contact="mailto:redaksi@example.com",
        push_hosts=["127.0.0.1"],
        topics=[
            Topic(id="nasional", label="Nasional"),
            Topic(id="internasional", label="Internasional"),
            Topic(id="olahraga", label="Olahraga"),
        ],
    )
    subs = SubscriptionStore(store.db)
    server = PushHttpServer(section, subs, public, site_name="medcom.id")
    await server.start()
    OUTPUT.mkdir(exist_ok=True)
    async with FakePushService(tmp_path / "push") as push, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield Site(server, subs, push, browser)
        finally:
            await browser.close()
            await server.stop()
            await store.close()


async def open_page(
    site: Site, permission: str, viewport: dict[str, int] = PHONE, init_script: str | None = None
) -> Page:
    context = await site.browser.new_context(viewport=viewport, locale="id-ID")  # type: ignore[arg-type]
    if permission == "granted":
        await context.grant_permissions(["notifications"], origin=site.origin)
    if init_script:
        await context.add_init_script(init_script)
    page = await context.new_page()
    if permission == "denied":  # as if the reader had blocked the site earlier
        target = await (await context.new_cdp_session(page)).send("Target.getTargetInfo")
        cdp = await site.browser.new_browser_cdp_session()
        await cdp.send(
            "Browser.setPermission",
            {
                "permission": {"name": "notifications"},
                "setting": "denied",
                "origin": site.origin,
                "browserContextId": target["targetInfo"]["browserContextId"],
            },
        )
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(site.url)
    return page


async def test_granted_page_registers_worker_and_explains_a_failing_push_service(site: Site) -> None:
    page = await open_page(site, "granted")
    await page.wait_for_selector("html[data-sw=registered]", timeout=10_000)
    assert (
        await page.evaluate(
            "navigator.serviceWorker.getRegistration().then(r => !!r && "
            "(r.active || r.installing || r.waiting).scriptURL)"
        )
        == site.url + "sw.js"
    )
    assert await page.evaluate("Notification.permission") == "granted"
    button = page.locator("#subscribe")
    assert await button.is_visible() and (await button.text_content()) == "Aktifkan notifikasi"
    assert await page.locator("#blocked").is_hidden()
    assert await page.locator("input[name=topic]").count() == 3
    await page.screenshot(path=str(OUTPUT / "webpush-granted-phone.png"), full_page=True)

    await page.locator("label.topic", has_text="Internasional").click()
    await button.click()
    # Offline there is no push service: the page must end in a clear error, never hang.
    await page.wait_for_selector("body[data-state=error]", timeout=20_000)
    status = await page.locator("#status").text_content()
    assert status == (
        "Gagal mengaktifkan notifikasi: layanan push browser tidak dapat dihubungi. "
        "Periksa koneksi internet Anda, lalu coba lagi."
    )
    assert (await page.locator("#error-detail code").text_content() or "").startswith("AbortError")
    assert await button.is_visible() and await button.is_enabled()
    assert (await button.text_content()) == "Coba lagi"
    await page.screenshot(path=str(OUTPUT / "webpush-push-service-error-phone.png"), full_page=True)
    assert await site.subs.count() == 0
    assert page.errors == []  # type: ignore[attr-defined]

    # The widget a site embeds: a prompt in its own shadow root with the same button.
    await page.add_script_tag(url=site.url + "widget.js")
    prompt = page.locator("[data-siar-push] >> css=button.go")
    await prompt.wait_for(timeout=5_000)
    assert (await prompt.text_content()) == "Aktifkan notifikasi"
    assert "Dapatkan berita terbaru dari kami" in (
        await page.locator("[data-siar-push] >> css=.text").text_content() or ""
    )
    await page.screenshot(path=str(OUTPUT / "webpush-widget-phone.png"))
    await page.locator("[data-siar-push] >> css=button.x").click()
    assert await page.locator("[data-siar-push]").count() == 0
    assert page.errors == []  # type: ignore[attr-defined]


async def test_denied_page_shows_unblock_steps(site: Site) -> None:
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await open_page(site, "denied", viewport)
        await page.wait_for_selector("body[data-state=blocked]", timeout=10_000)
        assert await page.evaluate("Notification.permission") == "denied"
        assert await page.locator("#subscribe").is_hidden()
        blocked = page.locator("#blocked")
        assert await blocked.is_visible()
        assert "Notifikasi sedang diblokir" in (await blocked.text_content() or "")
        browsers = await page.locator("#blocked details").evaluate_all(
            "els => els.map(e => [e.dataset.browser, e.open])"
        )
        assert browsers[0] == ["chrome", True]  # this browser's steps first and open
        assert {b for b, _ in browsers} == {"chrome", "android-chrome", "firefox", "safari-mac", "safari-ios"}
        assert await page.locator("#blocked details[open] li").count() == 3
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"]  # nothing sideways-scrolls on a phone
        await page.screenshot(path=str(OUTPUT / f"webpush-denied-{name}.png"), full_page=True)
        assert page.errors == []  # type: ignore[attr-defined]


def fake_push_manager(subscription: dict[str, Any] | None) -> str:
    """An init script replacing PushManager.subscribe: the given subscription, or a server-side path."""
    return """
      (() => {
        const sub = SUBSCRIPTION;
        let current = null;
        const wrap = s => ({ endpoint: s.endpoint, options: {}, toJSON: () => s,
                             unsubscribe: async () => { current = null; return true; } });
        PushManager.prototype.getSubscription = async function () { return current; };
        PushManager.prototype.subscribe = async function () { current = wrap(sub); return current; };
      })();
    """.replace("SUBSCRIPTION", json.dumps(subscription))


async def test_subscribing_stores_the_choice_and_server_refusal_is_clear(site: Site) -> None:
    good = site.push.new_subscription(site.server.public_key)
    page = await open_page(site, "granted", init_script=fake_push_manager(good))
    await page.wait_for_selector("html[data-sw=registered]", timeout=10_000)
    await page.locator("label.topic", has_text="Olahraga").click()
    await page.locator("#subscribe").click()
    await page.wait_for_selector("body[data-state=subscribed]", timeout=10_000)
    assert "Notifikasi aktif" in (await page.locator("#status").text_content() or "")
    (row,) = await site.subs.all()
    assert (row["endpoint"], json.loads(row["topics"])) == (good["endpoint"], ["olahraga"])
    assert await page.locator("#unsubscribe").is_visible()
    await page.screenshot(path=str(OUTPUT / "webpush-subscribed-phone.png"), full_page=True)
    await page.locator("#unsubscribe").click()
    await page.wait_for_selector("body[data-state=ready]", timeout=10_000)
    assert await site.subs.count() == 0

    bad = {**site.push.new_subscription(site.server.public_key), "endpoint": "https://evil.example/x"}
    page = await open_page(site, "granted", init_script=fake_push_manager(bad))
    await page.wait_for_selector("html[data-sw=registered]", timeout=10_000)
    await page.locator("#subscribe").click()
    await page.wait_for_selector("body[data-state=error]", timeout=10_000)
    assert (await page.locator("#status").text_content() or "").startswith("Gagal menyimpan langganan")
    assert "not a known push service" in (await page.locator("#error-detail code").text_content() or "")
    await page.screenshot(path=str(OUTPUT / "webpush-server-error-phone.png"), full_page=True)
    assert await site.subs.count() == 0
