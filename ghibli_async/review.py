"""The review page: a local web server over the state store, to look through the dataset, flip
filter decisions and fix captions.

Safety: it binds 127.0.0.1 unless told otherwise; every write needs the per-run token that only
the served page knows (another site open in the browser cannot read it, so cannot change the
dataset); requests name images by id, and no path from a request ever reaches the file system.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import math
import os
import re
import secrets
import shutil
import socket
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from ghibli_async.caption.checks import identity_phrases
from ghibli_async.clock import Clock, SystemClock
from ghibli_async.config import Config, load_config
from ghibli_async.errors import UserError
from ghibli_async.facts import Box
from ghibli_async.filter_rules import best_score, box_counts
from ghibli_async.recaption import Recaptioner
from ghibli_async.state import State
from ghibli_async.state.review import REVIEW_TABS, SORTS, Decided, ReviewItem, ReviewQuery
from ghibli_async.statuses import Override, Status
from ghibli_async.thumbs import ThumbJob, make_missing_thumbnails, make_thumbnail, thumb_path, thumb_source

MAX_PAGE = 200
MAX_OFFSET = 2**62  # past any dataset, and inside SQLite's 64-bit integers
MAX_BULK = 5000  # frames one keep/reject from the page may change at once
UNDO_KEPT = 50  # keep/reject actions the page can undo
STATS_TTL_S = 30.0  # the side panel's figures are recomputed at most this often unless the page changed something
TOKEN_HEADER = "X-Review-Token"
NOT_FILTERED = "not filtered (off in the last run)"
_STOPWORDS = frozenset(
    "a an and the of in on at with by to from is are her his their its into near under over behind".split()
)

CONFIG_KEY = web.AppKey("config", Config)
STATE_KEY = web.AppKey("state", State)
TOKEN_KEY = web.AppKey("token", str)
HOSTS_KEY = web.AppKey("hosts", frozenset)
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
MAX_CAPTION_CHARS = 1000  # far above any training caption (SD 1.5's text encoder reads 77 tokens)
_ID = r"\d{1,15}"  # longer is no image of ours (and would overflow SQLite's integer)


def make_app(
    config: Config, *, token: str | None = None, hosts: frozenset[str] = LOCAL_NAMES, clock: Clock | None = None
) -> web.Application:
    """The review app over `config`'s state; the store is opened once and closed with the app.
    Only requests addressed to one of `hosts` are served (DNS rebinding). `clock`: the quota
    day's, for captions asked again from the page (default: the system's)."""
    app = web.Application(middlewares=[_require_known_host, _require_token_for_writes])
    app[CONFIG_KEY] = config
    app[TOKEN_KEY] = token or secrets.token_urlsafe(24)
    app[HOSTS_KEY] = hosts
    app[STATE_KEY] = State.open(config.state_path)
    app[RECAPTION_KEY] = Recaptioner(app[STATE_KEY], config, clock or SystemClock())
    app.on_cleanup.append(_close_state)
    app[STATS_KEY] = StatsCache(config)
    app[UNDO_KEY] = UndoLog()
    app.router.add_get("/", _page)
    app.router.add_get("/api/images", _list_images)
    app.router.add_get("/api/position", _position)
    app.router.add_get("/api/facets", _facets)
    app.router.add_get(rf"/api/thumbs/{{image_id:{_ID}}}", _thumbnail)
    app.router.add_post(rf"/api/images/{{image_id:{_ID}}}/decision", _set_decision)
    app.router.add_post("/api/decisions", _set_decisions)
    app.router.add_post("/api/undo", _undo)
    app.router.add_post(rf"/api/images/{{image_id:{_ID}}}/caption", _set_caption)
    app.router.add_post("/api/recaption", _recaption)
    app.router.add_get("/api/recaption", _recaption_status)
    app.router.add_get("/api/stats", _stats)
    return app


async def _close_state(app: web.Application) -> None:
    await app[RECAPTION_KEY].aclose()  # a pass under way leaves its frames pending for the next run
    app[STATE_KEY].close()


@web.middleware
async def _require_known_host(request: web.Request, handler: Any) -> web.StreamResponse:
    """A page another site loads through a name that resolves here (DNS rebinding) has a foreign
    `Host`; a write from another site's page has a foreign `Origin`. Both are refused."""
    hosts = request.app[HOSTS_KEY]
    if _hostname(request.host) not in hosts:
        raise web.HTTPMisdirectedRequest(text="this review server does not serve that host name")
    origin = request.headers.get("Origin")
    if request.method != "GET" and origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="writes come only from the review page itself")
    return await handler(request)


def _hostname(host: str) -> str:
    """`localhost:8765` -> `localhost`, `[::1]:8765` -> `[::1]`."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.split(":", 1)[0]


@web.middleware
async def _require_token_for_writes(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method != "GET" and not secrets.compare_digest(
        request.headers.get(TOKEN_HEADER, ""), request.app[TOKEN_KEY]
    ):
        raise web.HTTPForbidden(text="missing or wrong review token: reload the page")
    return await handler(request)


def _page_html(token: str) -> str:
    """The page with its write token and the server's status and override values filled in."""
    html = resources.files("ghibli_async").joinpath("review_page.html").read_text(encoding="utf-8")
    enums: dict[str, type[Enum]] = {"{{STATUS}}": Status, "{{OVERRIDE}}": Override}
    for placeholder, enum in enums.items():
        html = html.replace(placeholder, json.dumps({member.name: member.value for member in enum}))
    return html.replace("{{TOKEN}}", token)


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=_page_html(request.app[TOKEN_KEY]), content_type="text/html")


async def _list_images(request: web.Request) -> web.Response:
    tab, query = _tab_and_query(request)
    try:
        offset = min(max(0, int(request.query.get("offset", "0"))), MAX_OFFSET)
        limit = min(MAX_PAGE, max(1, int(request.query.get("limit", "60"))))
    except ValueError:
        raise web.HTTPBadRequest(text="offset and limit are whole numbers") from None
    total, items = request.app[STATE_KEY].review.page(tab, offset=offset, limit=limit, query=query)
    config = request.app[CONFIG_KEY]
    return web.json_response({"total": total, "items": [item_json(item, config) for item in items]})


async def _position(request: web.Request) -> web.Response:
    """Where a frame number is in the tab as filtered and sorted: the page scrolls there."""
    tab, query = _tab_and_query(request)
    try:
        number = int(request.query["number"])
    except (KeyError, ValueError):
        raise web.HTTPBadRequest(text="number is a whole number") from None
    return web.json_response({"index": request.app[STATE_KEY].review.position(tab, number, query)})


async def _facets(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].review.facets())


def _tab_and_query(request: web.Request) -> tuple[str, ReviewQuery]:
    tab = request.query.get("tab", "kept")
    if tab not in REVIEW_TABS:
        raise web.HTTPBadRequest(text=f"unknown tab {tab!r}: one of {', '.join(REVIEW_TABS)}")
    sort = request.query.get("sort", "natural")
    if sort not in SORTS:
        raise web.HTTPBadRequest(text=f"unknown sort {sort!r}: one of {', '.join(SORTS)}")
    text = request.query.get
    query = ReviewQuery(text("q", "")[:200], text("reason"), text("detector"), text("model"), text("key"), sort)
    return tab, query


def item_json(item: ReviewItem, config: Config) -> dict[str, Any]:
    return {
        "id": item.image_id,
        "number": item.number,
        "name": item.name,
        "filter": {"status": item.filter_status, "reason": item.filter_reason, "override": item.override},
        "scores": {name: round(best_score(boxes), 3) for name, boxes in item.boxes.items()},
        "boxes": [
            shown
            for name, boxes in item.boxes.items()
            for shown in (_box_json(box, name, config, _shown_window(item)) for box in boxes)
            if (shown["counts"] or shown["score"] >= 0.1)  # not the faintest guesses stored for later
            and shown["x2"] > shown["x1"]
            and shown["y2"] > shown["y1"]  # not one the crop left out
        ],
        "resize": {"status": item.resize_status, "reason": item.resize_reason},
        "caption": {
            "text": item.caption,
            "status": item.caption_status,
            "reason": item.caption_reason,
            "model": item.model,
            "key": item.key,
            "edited": item.edited,
            "needs_review": item.needs_review,
            "checks": [] if item.edited else item.checks,  # what the caption checks found, and where
            "doubt": 0.0 if item.edited else item.caption_doubt,
            "sent_back": list(item.sent_back),  # captioned again by a model not in this list
        },
    }


def _shown_window(item: ReviewItem) -> tuple[float, float, float, float] | None:
    """The part of the frame its thumbnail shows, when the thumbnail is the resized image (a crop,
    a bucket, or a padded square); None: the whole frame."""
    return item.resize_window if item.resize_status == Status.DONE else None


def _box_json(
    box: Box, detector: str, config: Config, window: tuple[float, float, float, float] | None
) -> dict[str, Any]:
    """A box where it is in the thumbnail: in the resized image's own fractions when the thumbnail
    is the resized image (clipped to it), else in the frame's."""
    x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
    if window is not None:
        left, top, right, bottom = window
        x1, x2 = (min(max((x - left) / (right - left), 0.0), 1.0) for x in (x1, x2))
        y1, y2 = (min(max((y - top) / (bottom - top), 0.0), 1.0) for y in (y1, y2))
    return {
        "x1": round(x1, 4),
        "y1": round(y1, 4),
        "x2": round(x2, 4),
        "y2": round(y2, 4),
        "score": round(box.score, 3),
        "label": box.label,
        "detector": detector,
        "counts": box_counts(box, detector, config.filter),  # drawn green: a person under today's thresholds
    }


def _known_item(request: web.Request) -> ReviewItem:
    item = request.app[STATE_KEY].review.item(int(request.match_info["image_id"]))
    if item is None:
        raise web.HTTPNotFound(text="no such image")
    return item


async def _thumbnail(request: web.Request) -> web.FileResponse:
    item = _known_item(request)
    config = request.app[CONFIG_KEY]
    cached = thumb_path(config, item.image_id)
    if not cached.exists():
        job = ThumbJob(item.image_id, item.number, request.app[STATE_KEY].sources.path_of(item.image_id))
        source = thumb_source(config, job)
        if source is None or not await asyncio.to_thread(make_thumbnail, source, cached):
            raise web.HTTPNotFound(text="the source frame cannot be read")
    return web.FileResponse(cached, headers={"Cache-Control": "max-age=3600"})


async def _set_decision(request: web.Request) -> web.Response:
    item = _known_item(request)
    body = await _json_body(request)
    items, undo = _decide(request.app, [item.image_id], body.get("decision"))
    return web.json_response({**items[0], "undo": undo})


async def _set_decisions(request: web.Request) -> web.Response:
    """Keep or reject many frames at once (a selection on the page); the answer carries an undo id."""
    body = await _json_body(request)
    ids = _image_ids(body)
    items, undo = _decide(request.app, ids, body.get("decision"))
    return web.json_response({"items": items, "undo": undo})


def _image_ids(body: dict[str, Any]) -> list[int]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_BULK or not all(isinstance(i, int) for i in ids):
        raise web.HTTPBadRequest(text=f"ids is a list of 1 to {MAX_BULK} image ids")
    return ids


async def _recaption(request: web.Request) -> web.Response:
    """Caption a selection again with another model (spends quota; a caption written by hand stays)."""
    ids = _image_ids(await _json_body(request))
    try:
        sent = request.app[RECAPTION_KEY].send_back(ids)
    except UserError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    request.app[STATS_KEY].changed()
    items = [item_json(item, request.app[CONFIG_KEY]) for item in request.app[STATE_KEY].review.items(ids)]
    return web.json_response(
        {
            "sent": len(sent.numbers),
            "edited": sent.edited,
            "uncaptioned": sent.uncaptioned,
            "no_other_model": sent.no_other_model,
            "items": items,
        }
    )


async def _recaption_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RECAPTION_KEY].status())


def _decide(app: web.Application, ids: list[int], decision: object) -> tuple[list[dict[str, Any]], int]:
    if decision not in tuple(Override):
        raise web.HTTPBadRequest(text=f"decision must be one of {', '.join(map(str, Override))}")
    state = app[STATE_KEY]
    before = state.review.decide(ids, Override(decision))
    app[STATS_KEY].changed()
    return [item_json(item, app[CONFIG_KEY]) for item in state.review.items(ids)], app[UNDO_KEY].add(before)


async def _undo(request: web.Request) -> web.Response:
    body = await _json_body(request)
    before = request.app[UNDO_KEY].take(body.get("undo"))
    if before is None:
        raise web.HTTPNotFound(text="nothing to undo under that id (the server was restarted, or it was undone)")
    state = request.app[STATE_KEY]
    state.review.restore(before)
    request.app[STATS_KEY].changed()
    items = state.review.items([decided.image_id for decided in before])
    return web.json_response({"items": [item_json(item, request.app[CONFIG_KEY]) for item in items]})


class UndoLog:
    """The last UNDO_KEPT keep/reject actions made on the page, each as the frames were before it."""

    def __init__(self) -> None:
        self._actions: OrderedDict[int, list[Decided]] = OrderedDict()
        self._next = 1

    def add(self, before: list[Decided]) -> int:
        undo, self._next = self._next, self._next + 1
        self._actions[undo] = before
        while len(self._actions) > UNDO_KEPT:
            self._actions.popitem(last=False)
        return undo

    def take(self, undo: object) -> list[Decided] | None:
        return self._actions.pop(undo, None) if isinstance(undo, int) else None


async def _set_caption(request: web.Request) -> web.Response:
    item = _known_item(request)
    body = await _json_body(request)
    text = body.get("caption")
    if not isinstance(text, str):
        raise web.HTTPBadRequest(text="caption must be a string")
    caption = " ".join(text.split())
    if not caption:
        raise web.HTTPBadRequest(text="a caption cannot be empty")
    if len(caption) > MAX_CAPTION_CHARS:
        raise web.HTTPBadRequest(text=f"a caption is at most {MAX_CAPTION_CHARS} characters")
    state = request.app[STATE_KEY]
    state.review.edit_caption(item.image_id, caption)
    request.app[STATS_KEY].changed()
    return web.json_response(item_json(_known_item(request), request.app[CONFIG_KEY]))


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STATS_KEY].get())


class StatsCache:
    """The side panel's figures, computed in a worker thread over a connection of its own, so no
    request waits on them: a request gets the last figures at once (`fresh: false` while newer
    ones are being computed) and only the very first one awaits them. Stale after a change made on
    the page, or after STATS_TTL_S (a run may be writing meanwhile)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._figures: dict[str, Any] | None = None
        self._computed_at = -math.inf
        self._version = self._computed_version = 0
        self._computing: asyncio.Task[None] | None = None

    def changed(self) -> None:
        self._version += 1

    async def get(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fresh = self._computed_version == self._version and loop.time() - self._computed_at < STATS_TTL_S
        if not fresh and self._computing is None:
            self._computing = asyncio.create_task(self._compute())
        if self._figures is None:
            await self.settled()
            fresh = self._computed_version == self._version
        assert self._figures is not None
        return {**self._figures, "fresh": fresh}

    async def settled(self) -> None:
        """Until the computation under way, if any, has finished."""
        if self._computing is not None:
            await asyncio.shield(self._computing)

    async def _compute(self) -> None:
        version, loop = self._version, asyncio.get_running_loop()
        try:
            self._figures = await asyncio.to_thread(self._figures_now)
            self._computed_version, self._computed_at = version, loop.time()
        finally:
            self._computing = None

    def _figures_now(self) -> dict[str, Any]:
        with State.open(self._config.state_path, readonly=True) as state:
            return stats_payload(state, self._config)


STATS_KEY = web.AppKey("stats", StatsCache)
RECAPTION_KEY = web.AppKey("recaption", Recaptioner)
UNDO_KEY = web.AppKey("undo", UndoLog)


def stats_payload(state: State, config: Config) -> dict[str, Any]:
    counts = state.progress.counts()
    filtered = dict(counts.filter)
    last = state.runs.last()
    if last and not last.stages.get("filter", True) and Status.PENDING.value in filtered:
        filtered[NOT_FILTERED] = filtered.pop(Status.PENDING.value)  # not waiting: the filter was off
    captions = state.review.captions_with_models()
    return {
        "tabs": {tab: state.review.page(tab, offset=0, limit=1)[0] for tab in REVIEW_TABS},
        "filter": filtered,
        "caption": counts.caption,
        **caption_stats(captions, config.caption.trigger),
        # offered for the trigger (caption.identity_share), never removed
        "identity_phrases": identity_phrases([text for text, _ in captions], config.caption),
    }


def caption_stats(captions: list[tuple[str, str | None]], trigger: str) -> dict[str, Any]:
    """Word-count histogram (bins of 5), frequent words and phrases, and captions per model."""
    lengths: Counter[int] = Counter()
    words: Counter[str] = Counter()
    phrases: Counter[str] = Counter()
    for text, _ in captions:
        body = text[len(trigger) :] if text.startswith(trigger) else text
        tokens = re.findall(r"[a-zA-Z][a-zA-Z'-]*", body.lower())
        lengths[len(text.split()) // 5 * 5] += 1
        words.update(token for token in tokens if token not in _STOPWORDS)
        phrases.update(" ".join(tokens[i : i + 3]) for i in range(len(tokens) - 2))
    models = Counter(model or "by hand" for _, model in captions)
    return {
        "word_counts": [{"from": start, "to": start + 4, "count": n} for start, n in sorted(lengths.items())],
        "top_words": words.most_common(20),
        "top_phrases": [(phrase, n) for phrase, n in phrases.most_common(10) if n > 1],
        "models": dict(models.most_common()),
    }


def write_report(config: Config, dest: Path) -> Path:
    """The review page as a read-only folder to share: index.html (the figures and each tab's size),
    data/<tab>-<page>.js (REPORT_PAGE items each, loaded as the reader scrolls, so a report of
    50,000 frames opens as fast as one of 1,000) and thumbs/ (from the review page's cache, the
    missing ones made first in worker processes)."""
    with State.open(config.state_path, readonly=True) as state:
        make_missing_thumbnails(config, [ThumbJob(*row) for row in state.review.thumb_jobs()])
        stats = stats_payload(state, config)
        _clear_report(dest)
        for tab in REVIEW_TABS:
            for page, items in enumerate(_pages(state.review.iterate(tab), REPORT_PAGE)):
                _write_report_page(config, dest, tab, page, items)
    data = _script_json({"stats": stats, "page_size": REPORT_PAGE})
    banner = '<span class="help"><b>read-only report</b></span>'
    html = _page_html("").replace("<!--REPORT-->", banner)
    html = html.replace("<script>", f"<script>window.REPORT = {data};</script>\n<script>", 1)
    index = dest / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


REPORT_PAGE = 500


def _clear_report(dest: Path) -> None:
    """A report written before (its pages may outnumber this one's) is replaced, not mixed in."""
    shutil.rmtree(dest / "data", ignore_errors=True)
    (dest / "data").mkdir(parents=True)
    (dest / "thumbs").mkdir(exist_ok=True)


def _pages(items: Iterator[ReviewItem], size: int) -> Iterator[list[ReviewItem]]:
    while page := list(itertools.islice(items, size)):
        yield page


def _write_report_page(config: Config, dest: Path, tab: str, page: int, items: list[ReviewItem]) -> None:
    shown = [item_json(item, config) for item in items]
    (dest / "data" / f"{tab}-{page}.js").write_text(
        f"window.reportPage({json.dumps(tab)}, {page}, {_script_json(shown)});\n", encoding="utf-8"
    )
    for item in items:
        cached, target = thumb_path(config, item.image_id), dest / "thumbs" / f"{item.image_id}.jpg"
        if cached.exists() and not target.exists():
            _link_or_copy(cached, target)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def _script_json(value: object) -> str:
    """JSON to put inside a <script>: no "<" at all, so neither "</script>" nor "<!--" can end it."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def served_names(host: str) -> frozenset[str]:
    """The host names the page may be reached by: this machine's loopback names, the address it
    was bound to, and for a bind on every interface this machine's name and addresses."""
    addresses = {host}
    if host in ("0.0.0.0", "::", ""):
        addresses.add(socket.gethostname())
        try:
            addresses |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass
    return LOCAL_NAMES | {f"[{address}]" if ":" in address else address for address in addresses}


async def start_page(config: Config, *, host: str, port: int) -> tuple[web.AppRunner, str]:
    """The review app listening on `host:port` (0: any free port): its runner and its URL."""
    app = make_app(config, hosts=served_names(host))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is in use (another review page?): --port 0 picks a free one") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    shown = socket.gethostname() if _everywhere(host) else f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{runner.addresses[0][1]}/"


def _everywhere(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


async def serve(config: Config, *, host: str, port: int, open_browser: bool) -> None:
    """Serve until Ctrl-C."""
    runner, url = await start_page(config, host=host, port=port)
    print(f"Review page: {url}  (Ctrl-C to stop; changes are saved at once)", flush=True)
    if _everywhere(host):
        print(
            f"Warning: listening on every network interface ({url}): anyone who can reach this machine "
            "can see the frames; use --host 127.0.0.1 to keep it local",
            flush=True,
        )
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class ReviewPage:
    """The review page on a thread of its own, for a notebook: the cell that starts it returns at
    once and the kernel stays free for the next cell (a run, say); `stop()` ends it. (Awaited in
    a cell, `serve` would hold the kernel, and the next cell, until the kernel is interrupted.)"""

    def __init__(self, config: Config, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ghibli_async-review", daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(start_page(config, host=host, port=port), self._loop)
        try:
            self._runner, self.url = started.result()
        except BaseException:
            self._end()
            raise

    def stop(self) -> None:
        """Stop serving (every change was saved as it was made)."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
            self._end()

    def _end(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __repr__(self) -> str:
        return f"Review page: {self.url} (page.stop() ends it)"

    def _repr_html_(self) -> str:
        return f'Review page: <a href="{self.url}" target="_blank">{self.url}</a> (<code>page.stop()</code> ends it)'


def review_page(config: Config | str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0) -> ReviewPage:
    """Start the review page from Python (a notebook cell): `page = ghibli_async.review_page("config.yaml")`."""
    config = config if isinstance(config, Config) else load_config(config)
    if not config.state_path.exists():
        raise UserError(f"nothing to review yet: no state at {config.state_path} (run the pipeline first)")
    return ReviewPage(config, host=host, port=port)
