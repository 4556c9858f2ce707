"""Policy kind ``image_copyright``: hashing quality, the detector, adapters and the gateway.

Quality is measured on images generated here (tests/imagegen.py), never on
files of the machine: the shipped ``max_distance`` is checked against the
``scenes`` family it was calibrated on, and recall and false positives are
asserted on the ``textures`` family, which shares no drawing code with it.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from gateway.cli import main
from gateway.config import Route
from gateway.contract.detector import ImagePart
from gateway.contract.kind import BuildContext, Resources
from gateway.contract.policy import Status
from gateway.detectors.image_copyright import (
    DEFAULT_MAX_DISTANCE,
    ImageCopyrightDetector,
    ImageCopyrightPolicy,
)
from gateway.detectors.image_copyright import build as build_detector
from gateway.errors import ConfigError
from gateway.index import BuildParams, build_index
from gateway.index.images import (
    VARIANTS,
    ImageIndex,
    ImageUnreadable,
    build_image_index,
    phash64,
    popcount,
    working,
)
from gateway.index.manager import IndexManager
from gateway.policy.check import evaluate
from gateway.policy.loader import load_policies
from gateway.proxy.adapters import Adapters
from tests.conftest import ADMIN_TOKEN, REVIEWER_TOKEN, write_policies
from tests.imagegen import EDITS, FAMILIES, edited, jpeg, png_bytes, scene, texture
from tests.test_review_ui import login


def b64(img) -> str:
    return base64.b64encode(png_bytes(img)).decode("ascii")


# -- quality: calibration on one family, the result on the other ------------------------------
def measure(family: str, protected: int, unrelated: int, tmp: Path) -> dict:
    """Per copy: its distance to its own source; per unrelated image: to the nearest one."""
    gen = FAMILIES[family]
    src = tmp / f"{family}-src"
    src.mkdir()
    originals = [gen(s) for s in range(protected)]
    for i, img in enumerate(originals):
        (src / f"p{i:04d}.png").write_bytes(png_bytes(img))
    report = build_image_index(src, tmp / f"{family}-idx")
    assert report.problems == [] and report.images == protected
    index = ImageIndex(tmp / f"{family}-idx")
    own, best_is_own, edits = [], [], []
    for i, img in enumerate(originals):
        for k, edit in enumerate(EDITS):
            value = phash64(working(edited(img, edit, i * 31 + k)))
            own.append(int(popcount(index.hashes[index.owners == i] ^ np.uint64(value)).min()))
            found = index.search(value, DEFAULT_MAX_DISTANCE, limit=1)
            best_is_own.append(bool(found) and found[0].row == i)
            edits.append(edit)
    # unrelated images come from seeds no protected image uses
    nearest = [
        int(popcount(index.hashes ^ np.uint64(phash64(working(gen(100_000 + s))))).min())
        for s in range(unrelated)
    ]
    return {
        "own": np.array(own),
        "best_is_own": np.array(best_is_own),
        "edits": np.array(edits),
        "nearest": np.array(nearest),
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return measure("scenes", 120, 1000, tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    return measure("textures", 110, 1000, tmp_path_factory.mktemp("textures"))


@pytest.mark.slow
def test_the_default_max_distance_is_the_calibrated_one(scenes):
    def fpr(t: int) -> float:
        return float((scenes["nearest"] <= t).mean())

    # the rule: the largest distance whose false-positive rate stays <= 0.5%. pHash
    # sets half its bits, so distances are even and the next candidate is +2
    assert fpr(DEFAULT_MAX_DISTANCE) <= 0.005
    assert fpr(DEFAULT_MAX_DISTANCE + 2) > 0.005
    assert float((scenes["own"] <= DEFAULT_MAX_DISTANCE).mean()) >= 0.95


@pytest.mark.slow
def test_recall_and_false_positives_on_the_held_out_family(textures):
    assert len(set(textures["edits"])) == len(EDITS) and len(textures["nearest"]) >= 1000
    assert len(textures["own"]) >= 100 * len(EDITS)
    # a copy counts only when the best match names its own source
    recall = float(textures["best_is_own"].mean())
    fpr = float((textures["nearest"] <= DEFAULT_MAX_DISTANCE).mean())
    assert recall >= 0.95, recall
    assert fpr <= 0.01, fpr
    for edit in EDITS:
        mine = textures["best_is_own"][textures["edits"] == edit]
        assert mine.mean() >= 0.9, (edit, mine.mean())


# -- the index and the detector ------------------------------------------------------------------
@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """A small image index: six scenes, one named by sources.jsonl."""
    base = tmp_path_factory.mktemp("gallery")
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / f"scene-{i}.png").write_bytes(png_bytes(scene(500 + i)))
    jpeg(scene(505), 90).save(src / "sub" / "harbour.jpg", "JPEG", quality=90)
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "sources.jsonl").write_text(
        json.dumps(
            {
                "path": "sub/harbour.jpg",
                "id": "harbour-1",
                "title": "Harbour at dusk",
                "owner": "Example Library",
                "licence": "all-rights-reserved",
            }
        )
        + "\n"
    )
    report = build_image_index(src, base / "indexes" / "art")
    assert report.images == 6 and len(report.problems) == 1
    assert "broken.png" in report.problems[0]
    return base / "indexes" / "art"


def detector(index_dir: Path, **config) -> ImageCopyrightDetector:
    index = ImageIndex(index_dir)
    policy = ImageCopyrightPolicy(id="imgs", kind="image_copyright", index="art", **config)
    return ImageCopyrightDetector(policy, lambda: index)


def test_the_manifest_records_what_was_built(gallery):
    manifest = json.loads((gallery / "manifest.json").read_text())
    assert manifest["kind"] == "image" and manifest["format"] == 1
    assert manifest["counts"] == {"images": 6, "hashes": 6 * len(VARIANTS), "problems": 1}
    assert manifest["params"]["hash"] == "phash" and manifest["params"]["variants"] == list(
        VARIANTS
    )
    assert len(manifest["source"]["sha256"]) == 64 and manifest["build_seconds"] >= 0
    rows = [json.loads(line) for line in (gallery / "images.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {f"scene-{i}" for i in range(5)} | {"harbour-1"}


def test_a_copy_is_found_with_its_source_as_evidence(gallery):
    copy = edited(jpeg(scene(505), 90), "combined", 3)
    (finding,) = detector(gallery).check(ImagePart("data[0].b64_json", b64(copy)))
    ev = finding.evidence
    assert ev["source_id"] == "harbour-1"
    assert ev["source"]["title"] == "Harbour at dusk" and ev["source"]["path"] == "sub/harbour.jpg"
    assert ev["source"]["licence"] == "all-rights-reserved"
    assert 0 <= ev["distance"] <= DEFAULT_MAX_DISTANCE and ev["image"] == "data[0].b64_json"
    assert ev["thumbnail"].startswith("data:image/jpeg;base64,")
    assert ev["source_thumbnail"].startswith("data:image/jpeg;base64,")
    assert "harbour-1" in finding.message


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("%%%not base64%%%", "not valid base64"),
        (base64.b64encode(b"just some text").decode(), "not a readable image"),
        ("data:image/png,rawbytes", "a data URI that is not base64"),
        (base64.b64encode(png_bytes(scene(1)))[:-40].decode(), "damaged"),
    ],
    ids=["bad-base64", "not-an-image", "data-uri-without-base64", "truncated-png"],
)
def test_unreadable_images_are_errors_that_say_why(gallery, data, problem):
    with pytest.raises(ImageUnreadable, match=problem) as exc:
        detector(gallery).check(ImagePart("data[0].b64_json", data))
    assert "data[0].b64_json" in str(exc.value)


def test_size_limits_refuse_before_decoding(gallery):
    big = b64(scene(2))
    with pytest.raises(ImageUnreadable, match="pixels"):
        detector(gallery, max_pixels=1000).check(ImagePart("x", big))
    with pytest.raises(ImageUnreadable, match="over the limit"):
        detector(gallery, max_image_bytes=1000).check(ImagePart("x", big))


def test_links_are_never_fetched(gallery):
    part = ImagePart("data[0].url", url="http://169.254.169.254/latest/meta-data")
    with pytest.raises(ImageUnreadable, match="does not fetch links"):
        detector(gallery).check(part)
    assert detector(gallery, url_images="allow").check(part) == []


@pytest.mark.parametrize(
    ("image", "config", "hits"),
    [
        (lambda: scene(500), {}, ["scene-0"]),
        (lambda: texture(77), {}, []),
        (lambda: scene(500), {"allow_sources": ["scene-0"]}, []),
        (lambda: scene(500).convert("RGBA"), {}, ["scene-0"]),
        (lambda: scene(501).resize((900, 700)), {}, ["scene-1"]),
    ],
    ids=["exact", "unrelated", "allowed-source", "rgba", "upscaled"],
)
def test_detector_table(gallery, image, config, hits):
    found = detector(gallery, **config).check(ImagePart("img", b64(image())))
    assert [f.evidence["source_id"] for f in found] == hits


def test_a_text_index_is_refused_for_an_image_policy(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "words " * 40}) + "\n")
    build_index(corpus, tmp_path / "indexes" / "books", BuildParams(semantic=False))
    manager = IndexManager({"books": tmp_path / "indexes" / "books"})
    policy = ImageCopyrightPolicy(id="i", kind="image_copyright", index="books")
    with pytest.raises(ConfigError, match="is a text index"):
        build_detector(policy, BuildContext(tmp_path, Resources(indexes=manager)))
    missing = ImageCopyrightPolicy(id="i", kind="image_copyright", index="nope")
    with pytest.raises(ConfigError, match="unknown index 'nope'"):
        build_detector(missing, BuildContext(tmp_path, Resources(indexes=manager)))


def test_redact_is_refused_because_it_cannot_mask_an_image():
    with pytest.raises(ValueError, match="redact cannot mask part of an image"):
        ImageCopyrightPolicy(id="i", kind="image_copyright", action="redact")


def test_the_manager_loads_image_indexes_beside_text_ones(gallery):
    manager = IndexManager({"art": gallery})
    assert isinstance(manager.get("art"), ImageIndex)
    assert manager.status()["art"]["counts"] == {"images": 6, "hashes": 6 * len(VARIANTS)}
    assert manager.reload("art").manifest.generation == 1


# -- the engine: image policies read images, text policies read text --------------------------
POLICIES = """\
policies:
  - id: imgs
    kind: image_copyright
    index: art
  - id: words
    kind: phrases
    phrases: [forbidden]
"""


async def test_policies_read_only_the_segments_of_their_kind(gallery, tmp_path):
    path = write_policies(tmp_path / "p", POLICIES)
    policies = load_policies([path], resources=Resources(indexes=IndexManager({"art": gallery})))
    ctx_policies = policies.for_route("default")
    from gateway.policy.check import context_for

    copy = ImagePart("image.0", b64(scene(502)))
    text_only = await evaluate(ctx_policies, [("0", "a forbidden word")], context_for("default"))
    assert {r.config.id: r.status for r in text_only.results} == {
        "imgs": Status.SKIPPED,
        "words": Status.BREACH,
    }
    image_only = await evaluate(ctx_policies, [], context_for("default"), images=[("i", copy)])
    assert {r.config.id: r.status for r in image_only.results} == {
        "imgs": Status.BREACH,
        "words": Status.SKIPPED,
    }
    both = await evaluate(
        ctx_policies, [("0", "fine words")], context_for("default"), images=[("i", copy)]
    )
    assert {r.config.id: r.status for r in both.results} == {
        "imgs": Status.BREACH,
        "words": Status.PASS,
    }


async def test_a_contained_route_holds_an_answer_that_is_only_images():
    from gateway.policy.check import context_for
    from gateway.proxy.containment import HOLD_ALL

    part = ImagePart("data[0].b64_json", b64(texture(4)))
    guard = await evaluate([HOLD_ALL], [], context_for("default"), images=[("image.0", part)])
    assert guard.breached() == [HOLD_ALL.config.id]


# -- adapters: where images are in each protocol's answer -----------------------------------------
ADAPTERS = Adapters([Route(name="default", upstream="http://up")])


@pytest.mark.parametrize(
    ("path", "body", "found"),
    [
        (
            "/v1/images/generations",
            {"created": 1, "data": [{"b64_json": "QUJD"}, {"url": "https://x/y.png"}]},
            [
                ("image.0", "data[0].b64_json", "QUJD", None),
                ("image.1", "data[1].url", None, "https://x/y.png"),
            ],
        ),
        (
            "/v1/chat/completions",
            {
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": [
                                {"type": "text", "text": "here"},
                                {
                                    "type": "image_url",
                                    "image_url": {"url": "data:image/png;base64,QUJD"},
                                },
                            ],
                            "images": [
                                {"type": "image_url", "image_url": {"url": "https://x/z.png"}}
                            ],
                        },
                    }
                ]
            },
            [
                (
                    "image.0.content.1",
                    "choices[0].message.content[1].image_url",
                    "data:image/png;base64,QUJD",
                    None,
                ),
                (
                    "image.0.images.0",
                    "choices[0].message.images[0].image_url",
                    None,
                    "https://x/z.png",
                ),
            ],
        ),
        (
            "/v1/responses",
            {
                "object": "response",
                "output": [
                    {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
                    {"type": "image_generation_call", "id": "ig_1", "result": "QUJD"},
                ],
            },
            [("image.1", "output[1].result", "QUJD", None)],
        ),
        (
            "/v1/messages",
            {
                "type": "message",
                "content": [
                    {"type": "text", "text": "hi"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                    },
                ],
            },
            [("image.1", "content[1].source", "QUJD", None)],
        ),
    ],
    ids=["images", "chat", "responses", "anthropic"],
)
def test_adapters_find_the_images_of_an_answer(path, body, found):
    adapter = ADAPTERS.for_route(Route(name="default", upstream="http://up"), path)
    assert adapter is not None
    got = [(k, p.where, p.data, p.url) for k, p in adapter.images(body)]
    assert got == found


def test_image_paths_are_governed_and_streams_refused():
    route = Route(name="default", upstream="http://up")
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations"):
        assert ADAPTERS.for_route(route, path).protocol == "openai-images"
    adapter = ADAPTERS.for_route(route, "/v1/images/generations")
    with pytest.raises(Exception, match="streamed image generation is not governed"):
        adapter.request_info({"prompt": "a cat", "stream": True})


# -- the running gateway ------------------------------------------------------------------------
class ImageUpstream:
    """A fake images API answering with whatever body a test sets."""

    def __init__(self) -> None:
        self.body: dict = {}
        self.requests: list[tuple[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/images/generations", self.answer)
        self.app.router.add_post("/v1/images/edits", self.answer)
        self.app.router.add_post("/v1/responses", self.stream)
        # the events of a streamed Responses answer
        self.events: list[dict] = []

    async def answer(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.content_type))
        await request.read()
        return web.json_response(self.body)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in self.events:
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await resp.write_eof()
        return resp


@pytest.fixture
async def images_up(aiohttp_server):
    upstream = ImageUpstream()
    server = await aiohttp_server(upstream.app)
    upstream.url = str(server.make_url("")).rstrip("/")
    return upstream


GATEWAY_POLICY = """\
policies:
  - id: no-copied-images
    kind: image_copyright
    index: art
    action: {action}
    on_error: {on_error}
    severity: high
"""


async def start(make_gateway, images_up, policy_dir, gallery, action="block", on_error="block"):
    write_policies(policy_dir, GATEWAY_POLICY.format(action=action, on_error=on_error))
    return await make_gateway(
        [Route(name="default", upstream=images_up.url)], indexes={"art": str(gallery)}
    )


async def record_of(admin, gw, resp) -> dict:
    await gw.decisions.flush()
    got = await admin.get(
        f"/governance/v1/decisions/{resp.headers['x-governance-decision-id']}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert got.status == 200
    return await got.json()


GENERATE = {"model": "gpt-image-1", "prompt": "a harbour at dusk", "response_format": "b64_json"}


async def test_a_protected_image_is_blocked_with_its_source_named(
    make_gateway, images_up, policy_dir, gallery
):
    copy = edited(jpeg(scene(505), 90), "crop", 9)
    images_up.body = {"created": 1700000000, "data": [{"b64_json": b64(copy)}]}
    proxy, admin, gw = await start(make_gateway, images_up, policy_dir, gallery)
    resp = await proxy.post("/v1/images/generations", json=GENERATE)
    assert resp.status == 200 and resp.headers["x-governance-decision"] == "block"
    body = await resp.json()
    assert body["data"] == [] and body["governance"]["withheld"] is True
    assert "b64_json" not in json.dumps(body)
    record = await record_of(admin, gw, resp)
    (verdict,) = record["policies"]
    assert verdict["status"] == "breach" and record["protocol"] == "openai-images"
    finding = verdict["findings"][0]
    assert finding["segment"] == "image.0"
    assert finding["evidence"]["source_id"] == "harbour-1"
    assert finding["evidence"]["source"]["title"] == "Harbour at dusk"


async def test_fallback_answers_with_the_other_upstreams_image(
    make_gateway, images_up, aiohttp_server, policy_dir, gallery
):
    backup = ImageUpstream()
    server = await aiohttp_server(backup.app)
    backup.body = {"created": 2, "data": [{"b64_json": b64(texture(8))}]}
    images_up.body = {"created": 1, "data": [{"b64_json": b64(scene(501))}]}
    write_policies(policy_dir, GATEWAY_POLICY.format(action="fallback", on_error="block"))
    proxy, admin, gw = await make_gateway(
        [
            Route(name="primary", upstream=images_up.url, fallback="backup"),
            Route(name="backup", upstream=str(server.make_url("")).rstrip("/"), path_prefix="/x/"),
        ],
        indexes={"art": str(gallery)},
    )
    resp = await proxy.post("/v1/images/generations", json=GENERATE)
    assert resp.headers["x-governance-route"] == "backup"
    assert await resp.json() == backup.body
    record = await record_of(admin, gw, resp)
    assert [a["route"] for a in record["attempts"]] == ["primary", "backup"]
    assert record["attempts"][0]["fell_back"] == "no-copied-images"


async def test_a_clean_image_passes_untouched(make_gateway, images_up, policy_dir, gallery):
    images_up.body = {"created": 1, "data": [{"b64_json": b64(texture(3)), "revised_prompt": "x"}]}
    proxy, admin, gw = await start(make_gateway, images_up, policy_dir, gallery)
    resp = await proxy.post("/v1/images/generations", json=GENERATE)
    assert resp.headers["x-governance-decision"] == "allow"
    assert await resp.json() == images_up.body
    record = await record_of(admin, gw, resp)
    assert record["policies"][0]["status"] == "pass"


@pytest.mark.parametrize(("on_error", "decision"), [("block", "block"), ("allow", "allow")])
async def test_malformed_base64_is_an_error_the_policy_decides(
    make_gateway, images_up, policy_dir, gallery, on_error, decision
):
    images_up.body = {"created": 1, "data": [{"b64_json": "not*base64"}]}
    proxy, admin, gw = await start(make_gateway, images_up, policy_dir, gallery, on_error=on_error)
    resp = await proxy.post("/v1/images/generations", json=GENERATE)
    assert resp.headers["x-governance-decision"] == decision
    record = await record_of(admin, gw, resp)
    verdict = record["policies"][0]
    assert verdict["status"] == "error"
    assert "data[0].b64_json: not valid base64" in verdict["error"]


async def test_an_answer_without_images_is_a_bad_upstream(
    make_gateway, images_up, policy_dir, gallery
):
    images_up.body = {"created": 1, "data": [{"revised_prompt": "no image here"}]}
    proxy, _, _ = await start(make_gateway, images_up, policy_dir, gallery)
    resp = await proxy.post("/v1/images/generations", json=GENERATE)
    assert resp.status == 502
    assert "data[0]" in (await resp.json())["error"]["message"]


async def test_an_edit_form_is_governed_and_forwarded_whole(
    make_gateway, images_up, policy_dir, gallery
):
    images_up.body = {"created": 1, "data": [{"b64_json": b64(scene(503))}]}
    proxy, _, _ = await start(make_gateway, images_up, policy_dir, gallery)
    form = {"model": "gpt-image-1", "prompt": "make it blue", "image": png_bytes(texture(9))}
    from aiohttp import FormData

    data = FormData()
    for name, value in form.items():
        if isinstance(value, bytes):
            data.add_field(name, value, filename="in.png", content_type="image/png")
        else:
            data.add_field(name, value)
    resp = await proxy.post("/v1/images/edits", data=data)
    assert resp.headers["x-governance-decision"] == "block"
    assert images_up.requests[-1] == ("/v1/images/edits", "multipart/form-data")
    streamed = FormData(
        {"model": "gpt-image-1", "prompt": "p", "stream": "true"}, default_to_multipart=True
    )
    refused = await proxy.post("/v1/images/edits", data=streamed)
    assert refused.status == 400
    assert "streamed image generation" in (await refused.json())["error"]["message"]


async def test_a_held_image_shows_both_images_to_the_reviewer(
    make_gateway, images_up, policy_dir, gallery
):
    images_up.body = {"created": 1, "data": [{"b64_json": b64(scene(504))}]}
    proxy, admin, gw = await start(make_gateway, images_up, policy_dir, gallery, action="review")
    client = {"authorization": "Bearer sk-image-client"}
    resp = await proxy.post("/v1/images/generations", json=GENERATE, headers=client)
    review_id = resp.headers["x-governance-review-id"]
    assert (await resp.json())["data"] == []
    await login(admin)
    page = await admin.get(f"/review/items/{review_id}")
    assert "img-src 'self' data:" in page.headers["content-security-policy"]
    html = await page.text()
    table = html[html.index('<table class="side-by-side images">') :]
    table = table[: table.index("</table>")]
    assert table.count('<img class="evidence-image" src="data:image/jpeg;base64,') == 2
    assert "Protected image scene-4" in table
    # the fields list does not repeat the pictures as base64 text
    assert html.count("data:image/jpeg;base64,") == 2
    # approved, the client gets the image the upstream made
    reviewer = {"authorization": f"Bearer {REVIEWER_TOKEN}"}
    detail = await (await admin.get(f"/governance/v1/reviews/{review_id}", headers=reviewer)).json()
    ok = await admin.post(
        f"/governance/v1/reviews/{review_id}/approve",
        json={"version": detail["item"]["version"]},
        headers=reviewer,
    )
    assert ok.status == 200, await ok.text()
    result = await (
        await admin.get(f"/governance/v1/reviews/{review_id}/result", headers=client)
    ).json()
    assert result["status"] == "approved" and result["response"] == images_up.body


def test_cli_builds_queries_and_describes_an_image_index(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"pic{i}.png").write_bytes(png_bytes(scene(700 + i)))
    out = tmp_path / "indexes" / "pics"
    assert main(["index", "build", "--images", str(src), "--out", str(out), "--no-progress"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["images"] == 3 and built["hashes"] == 3 * len(VARIANTS)
    assert main(["index", "stats", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["manifest"]["kind"] == "image" and stats["counts"]["images"] == 3
    probe = tmp_path / "probe.jpg"
    edited(scene(701), "resize", random.Random(1).randrange(99)).save(probe, "JPEG")
    assert main(["index", "query", str(out), "--image", str(probe)]) == 0
    (finding,) = json.loads(capsys.readouterr().out)["findings"]
    assert finding["evidence"]["source_id"] == "pic1"
    assert main(["index", "add", str(out), "--corpus", str(probe)]) == 2
    assert "rebuild it with gateway index build --images" in capsys.readouterr().err
    assert main(["index", "build", "--images", str(tmp_path / "nope"), "--out", str(out)]) == 1
    # the failed build left the index as it was
    assert ImageIndex(out).counts()["images"] == 3


def image_stream(partial: str, final: str) -> list[dict]:
    """A Responses stream with one image generation call: a partial image, then the image."""
    call = {"type": "image_generation_call", "id": "ig_1", "status": "generating"}
    done = dict(call, status="completed", result=final)
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-5"}
    return [
        {"type": "response.created", "response": dict(response, status="in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": call},
        {
            "type": "response.image_generation_call.partial_image",
            "output_index": 0,
            "item_id": "ig_1",
            "partial_image_index": 0,
            "partial_image_b64": partial,
        },
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {
            "type": "response.completed",
            "response": dict(response, status="completed", output=[done]),
        },
    ]


STREAM_REQUEST = {
    "model": "gpt-5",
    "input": "draw a harbour",
    "tools": [{"type": "image_generation", "partial_images": 1}],
    "stream": True,
}


async def test_a_streamed_image_is_cut_before_any_copy_leaves(
    make_gateway, images_up, policy_dir, gallery
):
    protected = b64(scene(505).convert("RGB"))
    small = b64(scene(505).resize((96, 96)))
    images_up.events = image_stream(small, protected)
    proxy, admin, gw = await start(make_gateway, images_up, policy_dir, gallery)
    resp = await proxy.post("/v1/responses", json=STREAM_REQUEST)
    raw = await resp.read()
    assert small.encode() not in raw and protected.encode() not in raw
    assert b"partial_image" not in raw
    assert b"event: response.incomplete" in raw and b"content_filter" in raw
    record = await record_of(admin, gw, resp)
    finding = record["policies"][0]["findings"][0]
    assert finding["segment"] == "image.0.partial.0"
    assert finding["evidence"]["source_id"] == "harbour-1"


async def test_a_clean_streamed_image_goes_through(make_gateway, images_up, policy_dir, gallery):
    clean = b64(texture(21))
    images_up.events = image_stream(b64(texture(21).resize((80, 80))), clean)
    proxy, admin, gw = await start(make_gateway, images_up, policy_dir, gallery)
    resp = await proxy.post("/v1/responses", json=STREAM_REQUEST)
    raw = await resp.read()
    assert raw.count(clean.encode()) == 2  # the finished item, and the final response
    assert b"event: response.completed" in raw
    record = await record_of(admin, gw, resp)
    assert record["policies"][0]["status"] == "pass"


def test_only_image_data_uris_survive_masking_and_reach_an_img_tag():
    from gateway.review.render import findings_of
    from gateway.secretmask import mask_evidence
    from tests.test_review_store import make_item

    good = "data:image/jpeg;base64," + base64.b64encode(png_bytes(scene(3))).decode()
    token = "Zx9" + "aB3kQ7pL2mN8vR4tY6wE1uI5oP0sD9fG" * 2
    assert mask_evidence({"match_type": "image", "thumbnail": good})["thumbnail"] == good
    # the key alone does not exempt a string from masking
    assert token not in json.dumps(mask_evidence({"match_type": "image", "thumbnail": token}))
    hostile = 'data:image/jpeg;base64,AAAA" onerror="alert(1)'
    item = make_item(
        segments={},
        record={
            "segment_keys": [],
            "complete": True,
            "policies": [
                {
                    "id": "imgs",
                    "kind": "image_copyright",
                    "status": "breach",
                    "severity": "high",
                    "findings": [
                        {
                            "span": [0, 0],
                            "segment": "image.0",
                            "score": 0.9,
                            "message": "image copy of x",
                            "evidence": {
                                "source_id": "x",
                                "match_type": "image",
                                "thumbnail": hostile,
                                "source_thumbnail": good,
                            },
                        }
                    ],
                }
            ],
        },
    )
    (view,) = findings_of(item)
    assert view.image is None and view.source_image == good
    assert "thumbnail" not in view.evidence and "source_thumbnail" not in view.evidence


# -- review fixes: builds keep their sources, bounded forms, bounded decoding, masking -----------
def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_build_never_deletes_its_source_or_a_text_index(tmp_path, capsys):
    from gateway.index.images import is_image_index

    out = tmp_path / "indexes" / "art"
    inside = out / "images"
    inside.mkdir(parents=True)
    for i in range(2):
        (inside / f"pic{i}.png").write_bytes(png_bytes(scene(800 + i)))
    report = build_image_index(inside, out)
    assert report.images == 0 and "inside the output directory" in report.problems[0]
    assert sorted(p.name for p in inside.iterdir()) == ["pic0.png", "pic1.png"]
    assert not (out / "manifest.json").exists()
    cmd = ["index", "build", "--images", str(inside), "--out", str(out), "--no-progress"]
    assert main(cmd) == 1
    assert "inside the output directory" in capsys.readouterr().err
    assert len(list(inside.iterdir())) == 2
    # built from elsewhere, the index files are replaced and the directory's other files stay
    (out / "README.txt").write_text("who owns these")
    src = tmp_path / "src"
    src.mkdir()
    (src / "pic9.png").write_bytes(png_bytes(scene(809)))
    for _ in range(2):
        assert build_image_index(src, out).images == 1
        assert (out / "README.txt").read_text() == "who owns these"
        assert sorted(p.name for p in inside.iterdir()) == ["pic0.png", "pic1.png"]
    assert ImageIndex(out).manifest.generation == 2
    assert not list(out.parent.glob(".art.*"))
    # a text copyright index in --out is refused, and left as it was
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "words " * 40}) + "\n")
    books = tmp_path / "indexes" / "books"
    build_index(corpus, books, BuildParams(semantic=False))
    before = sorted(p.name for p in books.iterdir())
    report = build_image_index(src, books)
    assert report.images == 0 and "holds a text copyright index" in report.problems[0]
    assert sorted(p.name for p in books.iterdir()) == before and not is_image_index(books)


def test_the_unbuilt_index_hint_names_a_source_outside_the_index(tmp_path):
    (tmp_path / "indexes" / "art" / "images").mkdir(parents=True)
    (tmp_path / "policies").mkdir()
    policy = ImageCopyrightPolicy(id="i", kind="image_copyright", index="art")
    manager = IndexManager({})
    with pytest.raises(ConfigError, match="not built yet") as exc:
        build_detector(policy, BuildContext(tmp_path / "policies", Resources(indexes=manager)))
    message = str(exc.value)
    assert f"--images {tmp_path / 'images' / 'art'} --out {tmp_path / 'indexes' / 'art'}" in (
        message
    )
    assert f"--images {tmp_path / 'indexes' / 'art' / 'images'}" not in message


def many_parts(count: int, boundary: str = "b0undary") -> bytes:
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
    return (part * count + f"--{boundary}--\r\n").encode()


def test_an_edit_form_reads_its_text_fields_and_refuses_too_many_parts():
    from gateway.errors import BadRequest
    from gateway.proxy.adapters.openai_images import MAX_PARTS, ImagesAdapter

    adapter = ImagesAdapter()
    ctype = "multipart/form-data; boundary=b0undary"
    body = (
        b"preamble\r\n--b0undary\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n'
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="prompt"\r\n\r\nmake it "blue"\r\nplease\r\n'
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="n"\r\n\r\n2\r\n'
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="user"; filename="u.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nnot a field\r\n"
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="image"; filename="a;b.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes(scene(3)) + b"\r\n"
        b"--b0undary--\r\n"
    )
    assert adapter.parse_form(body, ctype) == {
        "model": "gpt-image-1",
        "prompt": 'make it "blue"\r\nplease',
        "n": 2,
    }
    assert adapter.parse_form(many_parts(MAX_PARTS), ctype) == {}
    with pytest.raises(BadRequest, match=f"more than {MAX_PARTS} parts"):
        adapter.parse_form(many_parts(80_000), ctype)
    for broken in (body[: len(body) // 2], b"no parts at all"):
        with pytest.raises(BadRequest, match="not valid multipart/form-data"):
            adapter.parse_form(broken, ctype)
    with pytest.raises(BadRequest, match="no boundary"):
        adapter.parse_form(body, "multipart/form-data")


async def test_a_form_of_many_parts_is_refused_in_the_clients_format(
    make_gateway, images_up, policy_dir, gallery
):
    proxy, _, _ = await start(make_gateway, images_up, policy_dir, gallery)
    resp = await proxy.post(
        "/v1/images/edits",
        data=many_parts(1_500),
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert resp.status == 400
    assert "more than 64 parts" in (await resp.json())["error"]["message"]
    assert images_up.requests == []


def test_pixel_limits_refuse_huge_images_and_large_ones_still_match(gallery):
    from gateway.index.images import MAX_PIXELS, reduce

    assert ImageCopyrightPolicy(id="i", kind="image_copyright").max_pixels == MAX_PIXELS
    assert MAX_PIXELS == 16_000_000
    huge = base64.b64encode(png_header(6300, 6300)).decode()
    with pytest.raises(ImageUnreadable, match="6300x6300 pixels; the limit is 16000000"):
        detector(gallery).check(ImagePart("data[0].b64_json", huge))
    # Pillow's own ceiling (a decompression bomb) is the same kind of error
    bomb = base64.b64encode(png_header(20_000, 20_000)).decode()
    with pytest.raises(ImageUnreadable, match="too many pixels"):
        detector(gallery, max_pixels=400_000_000).check(ImagePart("data[0].b64_json", bomb))
    # a large image is reduced before it is flattened, and still found
    big = scene(501).convert("RGBA").resize((2600, 2000))
    assert reduce(big).size == (1300, 1000)
    (finding,) = detector(gallery).check(ImagePart("img", b64(big)))
    assert finding.evidence["source_id"] == "scene-1"
    thumb = base64.b64decode(finding.evidence["thumbnail"].partition(",")[2])
    assert max(Image.open(io.BytesIO(thumb)).size) <= 96
    # an image of ordinary size takes the path it always took
    small = scene(500)
    assert reduce(small) is small


def test_a_file_pillow_refuses_is_skipped_and_counted_not_fatal(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(png_bytes(scene(900)))
    (src / "bomb.png").write_bytes(png_header(20_000, 20_000))
    report = build_image_index(src, tmp_path / "idx")
    assert report.images == 1 and report.skipped == 1
    (problem,) = report.problems
    assert problem.startswith("bomb.png:") and "skipped" in problem
    assert report.as_dict()["skipped"] == 1
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["counts"]["problems"] == 1 and manifest["counts"]["images"] == 1


def test_only_an_image_findings_own_small_thumbnails_escape_masking():
    from gateway.secretmask import IMAGE_URI_MAX_CHARS, mask_evidence

    key = "AKIAIOSFODNN7EXAMPLE"
    fake = "data:image/png;base64," + key
    good = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()
    nested = mask_evidence({"match_type": "image", "args": {"thumbnail": fake}})
    assert key not in json.dumps(nested)
    # at the top level too, base64 that is not an image's bytes is masked
    assert key not in json.dumps(mask_evidence({"match_type": "image", "thumbnail": fake}))
    # a real thumbnail outside an image finding, or nested in one, is not exempt
    assert mask_evidence({"thumbnail": good})["thumbnail"] != good
    assert mask_evidence({"match_type": "image", "x": {"thumbnail": good}})["x"] != {
        "thumbnail": good
    }
    # nor is one over the size the review page shows
    png = png_bytes(texture(5).resize((700, 700)))
    noise = random.Random(1).randbytes(IMAGE_URI_MAX_CHARS)
    padded = "data:image/png;base64," + base64.b64encode(png + noise).decode()
    kept = mask_evidence({"match_type": "image", "thumbnail": padded})["thumbnail"]
    assert kept != padded
    ev = {"match_type": "image", "thumbnail": good, "source_thumbnail": good}
    assert mask_evidence(ev) == ev


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    scene(4).convert("RGB").resize((96, 72)).save(buf, "JPEG", quality=75)
    return buf.getvalue()


async def test_a_stream_whose_images_are_not_read_is_not_scanned_rather_than_skipped(
    make_gateway, fake, policy_dir, gallery
):
    # chat and Anthropic streams carry no image the gateway reads: an image policy
    # cannot say "nothing to judge" there, only that it did not look
    write_policies(policy_dir, GATEWAY_POLICY.format(action="block", on_error="allow"))
    proxy, admin, gw = await make_gateway(
        [Route(name="default", upstream=fake.url)], indexes={"art": str(gallery)}
    )
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    streamed = await proxy.post("/v1/chat/completions", json={**chat, "stream": True})
    await streamed.read()
    assert (await record_of(admin, gw, streamed))["policies"][0]["status"] == "not_scanned"
    # a whole answer is read images and all: a text answer has none to judge
    whole = await proxy.post("/v1/chat/completions", json=chat)
    await whole.read()
    assert (await record_of(admin, gw, whole))["policies"][0]["status"] == "skipped"
