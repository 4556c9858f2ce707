"""The review queue and an incident page in headless Chromium, kept as screenshots in docs/.

Each run rewrites docs/screenshots/*.png from the pages as they are now, so
the pictures in the docs stay current with the templates.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ADMIN_TOKEN, write_policies
from tests.test_review_api import CHAT, CLIENT_KEY, REVIEW_POLICIES, auth, chat
from tests.test_review_browser import browser  # noqa: F401  (the fixture)

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
ANSWERS = [
    "Our recipe uses the secret sauce from grandma, mixed well with butter and herbs.",
    "The secret sauce is two parts mayonnaise, one part ketchup and a pinch of paprika.",
    "Nobody outside the kitchen may know the secret sauce; it ships in unmarked jars.",
]
POLICIES = REVIEW_POLICIES + "incident_rules:\n  - id: sauce-leaks\n    source: policy\n"


async def test_queue_and_incident_pages_as_screenshots(make_gateway, fake, browser, tmp_path):  # noqa: F811
    write_policies(tmp_path / "policies", POLICIES)
    proxy, admin, _ = await make_gateway(upstream=fake)
    for text in ANSWERS:
        fake.script.text = text
        resp = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
        assert resp.headers["x-governance-decision"] == "review"
    incidents = await (
        await admin.get("/governance/v1/incidents", headers=auth(ADMIN_TOKEN))
    ).json()
    [incident] = incidents["incidents"]
    base = str(admin.make_url("")).rstrip("/")
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"{base}/login?next=/review/")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("#login-submit")
    await page.wait_for_url(f"{base}/review/")
    # the queue shows what each held answer begins with, and who held it
    previews = await page.locator("td.preview").all_inner_texts()
    assert sorted(previews) == sorted(ANSWERS)
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / "review-queue.png"), full_page=True)

    await page.goto(f"{base}/incidents/{incident['id']}")
    assert await page.locator("svg rect.bar").count() == 30
    assert await page.locator("dl.evidence").count() >= 1
    await page.screenshot(path=str(SHOTS / "incident.png"), full_page=True)
    for name in ("review-queue.png", "incident.png"):
        data = (SHOTS / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
