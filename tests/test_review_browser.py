"""End to end in headless Chromium: a held answer is reviewed in the UI and reaches the client.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install -y chromium``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.conftest import REVIEWER_TOKEN, write_policies
from tests.test_review_api import CHAT, CLIENT_KEY, REVIEW_POLICIES, auth, chat

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = (
    "Here is the secret sauce: <script>window.__pwned = 1;</script> "
    '<img src=x onerror="window.__pwned = 2"> mix and serve.'
)


@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policies"
    write_policies(directory, REVIEW_POLICIES)
    return directory


@pytest.fixture
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def log_in(page, base: str) -> None:
    await page.goto(f"{base}/review/")
    assert "/login?next=" in page.url
    await page.fill("#token", REVIEWER_TOKEN)
    await page.click("#login-submit")
    await page.wait_for_url(f"{base}/review/")


async def audit_actions(page) -> list[str]:
    return await page.locator("#audit .audit-action").all_inner_texts()


@pytest.mark.slow
async def test_edit_and_approve_in_the_browser(make_gateway, fake, browser):
    fake.script.text = HOSTILE
    proxy, admin, _ = await make_gateway(upstream=fake)
    held = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    review_id = held.headers["x-governance-review-id"]
    base = str(admin.make_url("")).rstrip("/")
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await log_in(page, base)

    row = page.locator(f'tr.row[data-href="/review/items/{review_id}"]')
    assert await row.count() == 1
    assert "high" in await row.inner_text()
    await row.click()
    await page.wait_for_url(f"{base}/review/items/{review_id}")

    # evidence highlighted: the matched phrase is inside a <mark>
    marks = page.locator("#segment-0 mark.ev")
    assert await marks.all_inner_texts() == ["secret sauce"]
    # the script in the response is text, and never ran
    shown = await page.locator("#segment-0").inner_text()
    assert "<script>window.__pwned = 1;</script>" in shown
    assert '<img src=x onerror="window.__pwned = 2">' in shown
    assert await page.locator("#segment-0 script, #segment-0 img").count() == 0
    assert await page.evaluate("window.__pwned") is None

    # keyboard: c claims
    await page.keyboard.press("c")
    await page.wait_for_selector("#notice")
    assert await page.locator("#assignee").inner_text() == "rita"

    # keyboard: e focuses the editor; Ctrl+Enter approves the edit
    await page.keyboard.press("e")
    editor = page.locator("#edit-0")
    assert await editor.evaluate("el => el === document.activeElement")
    await editor.fill("Here is a public recipe: mix and serve.")
    await page.keyboard.press("Control+Enter")
    await page.wait_for_selector("#notice")
    assert await page.locator("#notice").inner_text() == "Approved with your edit."
    assert await page.locator("#item-state").inner_text() == "approved"

    poll = await admin.get(f"/governance/v1/reviews/{review_id}/result", headers=auth(CLIENT_KEY))
    result = await poll.json()
    assert result["status"] == "approved" and result["edited"] is True
    assert result["response"]["choices"][0]["message"]["content"] == (
        "Here is a public recipe: mix and serve."
    )

    assert await audit_actions(page) == ["held", "claim", "approve-edited"]
    actors = await page.locator("#audit tbody tr td:nth-child(2)").all_inner_texts()
    assert actors == ["gateway", "rita", "rita"]
    assert errors == []
    assert await page.evaluate("window.__pwned") is None


@pytest.mark.slow
async def test_reject_in_the_browser(make_gateway, fake, browser):
    fake.script.text = "Our secret sauce is vinegar."
    proxy, admin, _ = await make_gateway(upstream=fake)
    held = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    review_id = held.headers["x-governance-review-id"]
    base = str(admin.make_url("")).rstrip("/")
    page = await browser.new_page()
    await log_in(page, base)
    await page.goto(f"{base}/review/items/{review_id}")
    await page.keyboard.press("r")
    reason = page.locator("#reason")
    assert await reason.evaluate("el => el === document.activeElement")
    await reason.fill("Reveals a trade secret.")
    await page.click("#reject")
    await page.wait_for_selector("#notice")
    assert await page.locator("#item-state").inner_text() == "rejected"
    assert "Reveals a trade secret." in await page.locator("#decision").inner_text()

    result = await (
        await admin.get(f"/governance/v1/reviews/{review_id}/result", headers=auth(CLIENT_KEY))
    ).json()
    assert result["status"] == "rejected"
    assert result["reason"] == "Reveals a trade secret."
    assert "response" not in result
    assert await audit_actions(page) == ["held", "reject"]


@pytest.mark.slow
async def test_queue_keyboard_and_csp_in_the_browser(make_gateway, fake, browser):
    fake.script.text = "The secret sauce again."
    proxy, admin, _ = await make_gateway(upstream=fake)
    ids = [
        (await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))).headers[
            "x-governance-review-id"
        ]
        for _ in range(2)
    ]
    base = str(admin.make_url("")).rstrip("/")
    page = await browser.new_page()
    await log_in(page, base)
    # an inline script is refused by the content-security policy
    blocked = await page.evaluate("""() => {
        const s = document.createElement('script');
        s.textContent = 'window.__inline = 1';
        document.body.appendChild(s);
        return window.__inline === undefined;
    }""")
    assert blocked
    await page.keyboard.press("j")
    await page.keyboard.press("j")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{base}/review/items/*")
    opened = page.url.rsplit("/", 1)[-1]
    # rows are in SLA order: the second held item is the second row
    assert opened == ids[1]
