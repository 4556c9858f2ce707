"""Reviewer UI over HTTP: login, CSRF, escaping, headers, queue filters, allowlist."""

from __future__ import annotations

import re

import pytest

from gateway.web.sessions import COOKIE
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, review_of, write_policies
from tests.test_review_api import CHAT, CLIENT_KEY, REVIEW_POLICIES, auth, chat

HOSTILE = 'Try the secret sauce <script>alert("x")</script> & <img src=x onerror=alert(1)>.'
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def policy_dir(tmp_path):
    directory = tmp_path / "policies"
    write_policies(directory, REVIEW_POLICIES)
    return directory


async def login(admin, token: str = REVIEWER_TOKEN) -> str:
    """Log in through the form; return the session's CSRF token."""
    form = await admin.get("/review/login")
    csrf = _CSRF.search(await form.text()).group(1)
    done = await admin.post(
        "/login",
        data={"csrf": csrf, "token": token, "next": "/review/"},
        allow_redirects=False,
    )
    assert done.status == 303, await done.text()
    cookie = done.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    queue = await admin.get("/review/")
    return _CSRF.search(await queue.text()).group(1)


async def held(proxy) -> str:
    resp = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    return resp.headers["x-governance-review-id"]


async def test_login_needs_its_csrf_token_and_a_valid_token(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    forged = await admin.post("/login", data={"token": REVIEWER_TOKEN}, allow_redirects=False)
    assert forged.status == 403
    assert COOKIE not in forged.cookies
    form = await admin.get("/review/login")
    csrf = _CSRF.search(await form.text()).group(1)
    wrong = await admin.post("/login", data={"csrf": csrf, "token": "nope"}, allow_redirects=False)
    assert wrong.status == 401
    assert (await admin.get("/review/", allow_redirects=False)).status == 303


async def test_actions_need_the_csrf_token(make_gateway, fake):
    fake.script.text = HOSTILE
    proxy, admin, gw = await make_gateway(upstream=fake)
    review_id = await held(proxy)
    csrf = await login(admin)
    url = f"/review/items/{review_id}"
    missing = await admin.post(url, data={"do": "approve", "version": "1"}, allow_redirects=False)
    assert missing.status == 403
    wrong = await admin.post(
        url, data={"do": "approve", "version": "1", "csrf": "x" * 40}, allow_redirects=False
    )
    assert wrong.status == 403
    cross = await admin.post(
        url,
        data={"do": "approve", "version": "1", "csrf": csrf},
        headers={"origin": "http://evil.example"},
        allow_redirects=False,
    )
    assert cross.status == 403
    assert (await review_of(gw).db.get(review_id)).state == "pending"
    ok = await admin.post(
        url, data={"do": "approve", "version": "1", "csrf": csrf}, allow_redirects=False
    )
    assert ok.status == 303
    assert (await review_of(gw).db.get(review_id)).state == "approved"


async def test_item_page_escapes_and_sets_headers(make_gateway, fake):
    fake.script.text = HOSTILE
    proxy, admin, _ = await make_gateway(upstream=fake)
    review_id = await held(proxy)
    await login(admin)
    page = await admin.get(f"/review/items/{review_id}")
    html = await page.text()
    assert page.status == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert '<mark class="ev sev-high" data-findings="f0"' in html
    assert re.search(r"<mark [^>]*>secret sauce</mark>", html)
    # the only scripts are the UI's own file
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/ui/static/ui.js" defer>']


async def test_queue_filters_and_counts(make_gateway, fake):
    fake.script.text = HOSTILE
    proxy, admin, _ = await make_gateway(upstream=fake)
    ids = [await held(proxy) for _ in range(2)]
    await login(admin)
    html = await (await admin.get("/review/")).text()
    assert all(f"/review/items/{i}" in html for i in ids)
    # each row shows the first words of its answer, escaped
    assert html.count("Try the secret sauce &lt;script&gt;") == 2
    assert "<b>2</b> pending" in html
    assert 'id="approval-rates"' in html
    filtered = await (await admin.get("/review/?severity=low")).text()
    assert not any(f"/review/items/{i}" in filtered for i in ids)
    overdue = await (await admin.get("/review/?overdue=1")).text()
    assert "Nothing here." in overdue


async def test_queue_preview_is_short_and_masks_secrets(make_gateway, fake):
    key = "sk-live-" + "Zx8Yw7Vu6Ts5Rq4Po3Nm2Lk1Jh0Gf9Ed8"
    fake.script.text = f"The secret sauce needs {key} and then " + "more words " * 40
    proxy, admin, gw = await make_gateway(upstream=fake)
    review_id = await held(proxy)
    item = await review_of(gw).db.get(review_id)
    assert item.preview.startswith("The secret sauce needs sk-live-…[openai-key")
    assert item.preview.endswith("…") and key not in item.preview
    await login(admin)
    html = await (await admin.get("/review/")).text()
    assert key not in html and "The secret sauce needs sk-live-…" in html


async def test_reviewer_role_cannot_bulk_or_allowlist_in_ui(make_gateway, fake):
    fake.script.text = HOSTILE
    proxy, admin, gw = await make_gateway(upstream=fake)
    review_id = await held(proxy)
    csrf = await login(admin)
    bulk = await admin.post(
        "/review/bulk",
        data={"csrf": csrf, "action": "approve", "sel": f"{review_id}:1"},
        allow_redirects=False,
    )
    assert bulk.status == 403
    allow = await admin.post(
        f"/review/items/{review_id}",
        data={"csrf": csrf, "do": "allowlist", "policy": "hold-sauce", "finding": "0"},
        allow_redirects=False,
    )
    assert allow.status == 403
    assert (await review_of(gw).db.get(review_id)).state == "pending"


async def test_conflict_is_shown_as_409_page(make_gateway, fake):
    fake.script.text = HOSTILE
    proxy, admin, _ = await make_gateway(upstream=fake)
    review_id = await held(proxy)
    csrf = await login(admin)
    await admin.post(
        f"/governance/v1/reviews/{review_id}/claim", json={"version": 1}, headers=auth(ADMIN_TOKEN)
    )
    stale = await admin.post(
        f"/review/items/{review_id}", data={"do": "approve", "version": "1", "csrf": csrf}
    )
    assert stale.status == 409
    assert "changed since you loaded it" in await stale.text()


BIAS_POLICIES = """\
# reviewed, not blocked: some of these are quotes from history lessons
policies:
  - id: hold-bias
    kind: bias
    signals: [lexicon, slurs, generalisation, dehumanising]
    action: review
    severity: medium
"""


async def test_allowlist_from_the_item_page_edits_validates_and_reloads(
    make_gateway, fake, tmp_path
):
    policy_file = write_policies(tmp_path / "policies", BIAS_POLICIES)
    policy_file.chmod(0o600)
    fake.script.text = "Most immigrants are lazy."
    proxy, admin, gw = await make_gateway(upstream=fake)
    review_id = await held(proxy)
    before = gw.policies.current.revision
    # a reviewer may not change policies; a lead (admin here) may
    csrf = await login(admin, ADMIN_TOKEN)
    page = await (await admin.get(f"/review/items/{review_id}")).text()
    assert "Allow: add the flagged sentence to extra_allow_patterns of hold-bias" in page
    done = await admin.post(
        f"/review/items/{review_id}",
        data={"csrf": csrf, "do": "allowlist", "policy": "hold-bias", "finding": "0"},
        allow_redirects=False,
    )
    assert done.status == 303, await done.text()
    text = policy_file.read_text()
    assert text.startswith("# reviewed, not blocked")  # the file keeps its comments
    assert policy_file.stat().st_mode & 0o777 == 0o600  # and its permissions
    assert 'extra_allow_patterns: ["^Most\\\\ immigrants\\\\ are\\\\ lazy\\\\.$"]' in text
    assert gw.policies.current.revision != before
    again = await proxy.post(CHAT, json=chat(), headers=auth(CLIENT_KEY))
    assert again.headers["x-governance-decision"] == "allow"
    audit = await review_of(gw).db.audit(review_id)
    entry = next(a for a in audit if a["action"] == "allowlist-add")
    assert entry["actor"] == "root" and entry["detail"]["policy"] == "hold-bias"


async def test_allowlist_edit_that_does_not_validate_is_not_written(make_gateway, fake, tmp_path):
    from gateway.review.allowlist import add_entry

    directory = tmp_path / "policies"
    path = directory / "main.yaml"
    _, _, gw = await make_gateway(upstream=fake)
    original = path.read_text()
    # phrases policies have no allow_sources field: the same loader refuses it
    changed = add_entry(original, "hold-sauce", "allow_sources", "doc-1")
    from gateway.review.allowlist import _validate_and_write

    errors = _validate_and_write(gw.policies, path, changed)
    assert any("allow_sources" in e and str(path) in e for e in errors)
    assert path.read_text() == original
    assert not list(directory.glob(".*tmp"))


async def test_copyright_finding_shows_source_side_by_side(make_gateway, fake):
    from tests.test_review_store import make_item

    _, admin, gw = await make_gateway(upstream=fake)
    text = "He said: It was the best of times, it was the worst of times. Then left."
    start = text.index("It was")
    end = text.index(" Then")
    item = make_item(
        segments={"0": text},
        record={
            "segment_keys": ["0"],
            "complete": True,
            "policies": [
                {
                    "id": "copy-guard",
                    "kind": "copyright",
                    "status": "breach",
                    "severity": "high",
                    "findings": [
                        {
                            "span": [start, end],
                            "segment": "0",
                            "score": 0.97,
                            "message": "verbatim copy of dickens-1 (12 words)",
                            "evidence": {
                                "source_id": "dickens-1",
                                "title": "A Tale <of> Two",
                                "match_type": "verbatim",
                                "source_text": "It was the best of times, it was the "
                                "worst of times",
                            },
                        }
                    ],
                }
            ],
        },
    )
    await review_of(gw).db.insert(item)
    await login(admin)
    html = await (await admin.get(f"/review/items/{item.id}")).text()
    table = html[html.index('<table class="side-by-side">') :]
    table = table[: table.index("</table>")]
    assert "Source dickens-1 · A Tale &lt;of&gt; Two" in table
    assert table.count("It was the best of times") == 2
    assert "verbatim copy of dickens-1" in html
    # copyright findings offer the allowlist to leads only
    assert "Allow: add" not in html


async def test_a_login_without_a_destination_lands_on_the_queue(make_gateway, fake):
    _, admin, _ = await make_gateway(upstream=fake)
    form = await admin.get("/login")
    csrf = _CSRF.search(await form.text()).group(1)
    done = await admin.post(
        "/login", data={"csrf": csrf, "token": REVIEWER_TOKEN}, allow_redirects=False
    )
    assert done.status == 303 and done.headers["location"] == "/review/"
    # the navigation lists the queue first, then the incidents
    html = await (await admin.get("/review/")).text()
    assert html.index('href="/review/"') < html.index('href="/incidents/"')
