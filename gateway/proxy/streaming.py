"""Reading upstream streams: merging reads, and reading on past a cut for a review hold."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import aiohttp

from gateway.proxy.adapters.base import Done, StreamTranslator, Text
from gateway.proxy.sse import SSEParser

log = logging.getLogger(__name__)


def coalesce(items: list) -> list:
    """Merge neighbouring text pieces of one segment that arrived in one read.

    When the upstream outpaces us, a read holds many events; scanning their
    text once instead of once per event keeps the gateway from falling
    further behind, and adds no delay when it keeps up.
    """
    out: list = []
    for item in items:
        if isinstance(item, Text) and out and isinstance(out[-1], Text) and out[-1].key == item.key:
            out[-1] = Text(item.key, out[-1].text + item.text)
        else:
            out.append(item)
    return out


def unfed_text(items: list, texts: dict[str, str]) -> list[tuple[str, str]]:
    """Text of the last read that the guard never took, because it stopped part-way.

    The guard takes the read's (coalesced) items in order and stops after
    one of them, so what it took is a prefix: the longest prefix whose text
    each segment's text ends with.
    """
    runs = [u for u in coalesce(list(items)) if isinstance(u, Text)]
    for cut in range(len(runs), -1, -1):
        fed: dict[str, str] = {}
        for run in runs[:cut]:
            fed[run.key] = fed.get(run.key, "") + run.text
        if all(texts.get(k, "").endswith(v) for k, v in fed.items()):
            return [(r.key, r.text) for r in runs[cut:]]
    return []


async def read_rest(
    texts: dict[str, str],
    translator: StreamTranslator,
    unread: tuple[aiohttp.ClientResponse, SSEParser, list[Any]] | None,
    seconds: float,
    route: str,
) -> tuple[dict[str, str], bool]:
    """Every segment's full text, reading the stream on from where the guard stopped.

    ``texts`` is what the guard saw; ``unread`` the response, its parser and
    the items of the read the guard stopped in. Returns the texts and whether
    the stream reached its terminator within ``seconds``.
    """
    texts = dict(texts)
    if not unread:
        return texts, False
    resp, parser, items = unread
    for key, piece in unfed_text(items, texts):
        texts[key] = texts.get(key, "") + piece
    if any(isinstance(i, Done) for i in items):
        return texts, True
    # a copy, so the state the cut events are rendered from stays as the client saw it
    shadow = copy.deepcopy(translator)

    def take(evs) -> bool:
        for ev in evs:
            for item in shadow.parse(ev):
                if isinstance(item, Text):
                    texts[item.key] = texts.get(item.key, "") + item.text
                elif isinstance(item, Done):
                    return True
        return False

    done = False
    try:
        async with asyncio.timeout(max(seconds, 0.001)):
            async for chunk in resp.content.iter_any():
                if take(parser.feed(chunk)):
                    done = True
                    break
            else:
                done = take(parser.close())
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("held stream from %s broke off: %s", route, exc)
    return texts, done
