"""The web console under a big store: 1,000,000 calls and 100,000 recordings on SQLite.

- The calls page (``/calls``) and the API (``/api/v1/calls``), p99 per filter, over HTTP to a
  real ``callconsent web`` logged in (a session cookie; the API with a Bearer token), against
  the limit: the same statements run directly through SQLAlchemy in this process. The three
  are timed in turns (query, page, API, query, ...), so the load of a shared machine falls on
  limit and page alike.
- Time to first byte of a ``Range`` request in the middle of a one-hour recording (decrypted
  segment by segment) against the same server sending the plaintext WAV as a plain file.
- 50 players streaming at once, ours against that plain file; every range's bytes are
  checked equal to the plaintext's.
- The pages that read what grows with every call: the dashboard (its totals before today kept
  by a pass in the background) and the audit page (its check of the whole chain, one audit row
  a call here, likewise), each against the statements it runs at every load, directly; and
  what each page computed in the request before (the pass itself, timed directly); and the
  calls page while the server's audit check runs (in a process of its own).

The server is ``callconsent web`` itself (``cli.main([... "web"])``) with one route added for
the limit: the plaintext WAV served by Starlette's StaticFiles (``/bench-plain``).
Goals: pages p99 <= 100 ms and <= 2x the direct query; first byte <= 50 ms; streaming
>= 0.5x the plain file's throughput. The store is built once per schema revision and size in
bench/out/ (bench/_webdata.py).

    python bench/web.py [--quick] [--calls N] [--recordings N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import math
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# the project before bench/ (where this file would shadow the `web` package)
sys.path.insert(0, str(ROOT))

PLAYERS = 50
PAGE_LIMIT = 50  # [web] page_size: the page asks for one more row to know there is a next


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def p50(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2]


def serve(config: str, port: int, plain_dir: str) -> int:
    """``callconsent web`` with the plain-file route added (the limit, in the same server)."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    import web.app
    from callconsent import cli

    build = web.app.build

    def with_plain(services: Any) -> Any:
        app = build(services)
        app.router.routes.append(Mount("/bench-plain", StaticFiles(directory=plain_dir)))
        return app

    web.app.build = with_plain  # callconsent web imports build when it starts
    return cli.main(["--config", config, "web", "--host", "127.0.0.1", "--port", str(port)])


def start_server(ds: Any, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    from _common import free_port

    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                ds.config,
                "--port",
                str(port),
                "--plain",
                ds.plain_dir,
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/login")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"callconsent web did not start: {log.read_text()[-2000:]}")


class Http:
    """One keep-alive connection; each call returns (status, body, headers)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = headers

    def request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, http.client.HTTPMessage]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body, {**self.headers, **(headers or {})})
                r = self.conn.getresponse()
                return r.status, r.read(), r.headers
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()  # uvicorn closed an idle keep-alive connection: reconnect
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def log_in(port: int, user: str, password: str) -> str:
    """The session cookie, through the login form as a browser sends it."""
    client = Http(port, {})
    _, page, headers = client.request("GET", "/login")
    token = re.search(rb'name="login_token" value="([^"]+)"', page)
    cookie = (headers.get("set-cookie") or "").split(";")[0]
    assert token and cookie, "the login page has no login token"
    form = urllib.parse.urlencode(
        {"login_token": token.group(1).decode(), "name": user, "password": password}
    )
    status, _, headers = client.request(
        "POST",
        "/login",
        form,
        {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    session = [c.split(";")[0] for c in headers.get_all("set-cookie") or [] if "cc_session" in c]
    assert status == 303 and session, f"login refused: {status}"
    return session[0]


def filters(ds: Any) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "date range (7 days)": {"since": ds.since, "until": ds.until},
        "campaign": {"campaign": ds.campaign},
        "direction": {"direction": "outbound"},
        "consent status": {"consent": "declined"},
        "agent": {"agent": ds.agent},
        "phone number": {"nk": ds.number_key},
    }


def timed(fns: dict[str, Callable[[], object]], n: int, budget_s: float) -> dict[str, list[float]]:
    """Milliseconds per call of each function, taken in turns (one of each per round, so a
    load that comes and goes on a shared machine falls on all of them alike): 2 warm-up
    rounds, then n rounds or until the budget is spent."""
    for fn in (*fns.values(), *fns.values()):
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start, rounds = time.monotonic(), 0
    while rounds < n and (rounds < 10 or time.monotonic() - start < budget_s):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1000)
        rounds += 1
    return samples


def first_byte_ms(port: int, path: str, headers: dict[str, str], start: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    conn.request("GET", path, headers={**headers, "Range": f"bytes={start}-{start + 65535}"})
    r = conn.getresponse()
    r.read(1)
    elapsed = (time.perf_counter() - t0) * 1000
    assert r.status == 206, f"{path}: {r.status}"
    r.read()
    conn.close()
    return elapsed


async def _player(port: int, path: str, cookie: str, start: int, end: int) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes={start}-{end}\r\n"
        f"Cookie: {cookie}\r\nConnection: close\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.split()[1] == b"206", head[:200]
    m = re.search(rb"content-length: *(\d+)", head, re.I)
    length, got, digest = int(m.group(1)) if m else 0, 0, hashlib.sha256()
    while got < length:
        chunk = await reader.read(1 << 18)
        if not chunk:
            break
        got += len(chunk)
        digest.update(chunk)
    writer.close()
    return got, digest.hexdigest()


def stream(
    port: int, path: str, cookie: str, ranges: list[tuple[int, int]]
) -> tuple[float, list[str]]:
    """All players at once: (MB/s over all of them, each range's SHA-256)."""

    async def run() -> list[tuple[int, str]]:
        return await asyncio.gather(*(_player(port, path, cookie, a, b) for a, b in ranges))

    t0 = time.perf_counter()
    results = asyncio.run(run())
    elapsed = time.perf_counter() - t0
    total = sum(got for got, _ in results)
    assert total == sum(b - a + 1 for a, b in ranges), "a player got fewer bytes than asked"
    return total / elapsed / 1e6, [d for _, d in results]


def growing_pages(
    db: Any, supervisor: Http, dpo: Http, person: str, n: int, budget_s: float
) -> dict[str, Any]:
    """The dashboard and the audit page in turns with the statements they run at every load;
    first what each computed in the request before this change (its pass, directly), and the
    first load of each, which starts the server's pass and waits for it at most 1 s."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from recorder.store import audit
    from recorder.store.models import RETENTION_ACTOR, AuditEntry
    from web import dashboard
    from web.queries import audit_statement

    today = datetime.now(UTC).date()
    t0 = time.perf_counter()
    totals = dashboard.totals(db, today)
    dashboard_pass_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    with db.read() as s:
        report = audit.verify(s)
    audit_check_s = time.perf_counter() - t0
    # the chain holds; the bulk rows (no audit rows of their own) are its content problems
    assert report.rows and not report.problems, report.problems[:3]
    first: dict[str, float] = {}
    for name, client, url in (("dashboard", supervisor, "/dashboard"), ("audit", dpo, "/audit")):
        t0 = time.perf_counter()
        status, body, _ = client.request("GET", url)
        first[name] = (time.perf_counter() - t0) * 1000
        assert status == 200, f"{url}: {status} {body[:300]!r}"
    # while the server's check runs: the calls page (what its thread costs the others)
    deadline = time.monotonic() + 30 + 3 * audit_check_s
    during: list[float] = []
    while b"is running" in dpo.request("GET", "/audit")[1]:
        assert time.monotonic() < deadline, "the audit page's check did not end"
        for _ in range(20):
            t0 = time.perf_counter()
            supervisor.request("GET", "/calls")
            during.append((time.perf_counter() - t0) * 1000)

    def dashboard_live() -> None:
        with db.read() as s:  # what collect() reads at every load (web/dashboard.py)
            dashboard.live(s, totals.until)

    def audit_rows(actor: str | None = None) -> None:
        with db.read() as s:  # the page's statement (web/queries.py), run directly
            found = s.scalars(audit_statement(None, actor, None, 100)).all()
        # a person: the bench's user made its token; retention: the store never purged
        assert found or actor in (None, RETENTION_ACTOR), f"no audit rows by {actor}"

    # before migration 0008: the log by retention, in a store that never purged, as the page
    # read it then (its index dropped in a transaction rolled back; SQLite only)
    by_retention_walk_ms = math.nan
    if db.dialect == "sqlite":
        raw = db.engine.raw_connection()
        try:
            cur = raw.driver_connection.cursor()  # autocommit (db.py): BEGIN and ROLLBACK are ours
            cur.execute("BEGIN")
            cur.execute("DROP INDEX ix_audit_log_retention")
            t0 = time.perf_counter()
            cur.execute(
                "SELECT * FROM audit_log WHERE actor = ? ORDER BY seq DESC LIMIT 100",
                (RETENTION_ACTOR,),
            ).fetchall()
            by_retention_walk_ms = (time.perf_counter() - t0) * 1000
            cur.execute("ROLLBACK")
        finally:
            raw.close()

    samples = timed(
        {
            "dashboard query": dashboard_live,
            "dashboard page": lambda: supervisor.request("GET", "/dashboard"),
            "audit query": audit_rows,
            "audit page": lambda: dpo.request("GET", "/audit"),
            "by person query": lambda: audit_rows(person),
            "by person page": lambda: dpo.request("GET", f"/audit?actor={person}"),
            "by retention query": lambda: audit_rows(RETENTION_ACTOR),
            "by retention page": lambda: dpo.request("GET", f"/audit?actor={RETENTION_ACTOR}"),
        },
        n,
        budget_s,
    )
    with db.read() as s:
        rows = s.scalar(select(func.count()).select_from(AuditEntry))
    return {
        "samples": samples,
        "first": first,
        "calls_during_check": during,
        "dashboard_pass_ms": dashboard_pass_ms,
        "audit_check_s": audit_check_s,
        "by_retention_walk_ms": by_retention_walk_ms,
        "audit_rows": rows,
    }


def passes_logged(log: Path) -> dict[str, int]:
    """The server's background passes, by name (``kept_pass_done name=...`` in its log)."""
    found: dict[str, int] = {}
    for m in re.finditer(r"kept_pass_done\b.*?name=(\S+)", log.read_text(errors="replace")):
        found[m.group(1)] = found.get(m.group(1), 0) + 1
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100,000 calls, fewer samples")
    ap.add_argument("--calls", type=int)
    ap.add_argument("--recordings", type=int)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.port, args.plain)

    from _common import rss_mib
    from _webdata import DPO, PASSWORD, USER, dataset
    from _webquery import DirectQuery

    n_calls = args.calls or (100_000 if args.quick else 1_000_000)
    n_recs = args.recordings or n_calls // 10
    samples, budget = (100, 3.0) if args.quick else (300, 20.0)
    stream_bytes = (2 if args.quick else 8) << 20
    t0 = time.monotonic()
    ds = dataset(n_calls, n_recs, 3600.0)
    how = f"built in {ds.built_s:.0f} s" if time.monotonic() - t0 > 5 else "cached"
    print(f"store: {ds.calls:,} calls, {ds.recordings:,} recordings in {ds.root} ({how})")
    proc, port = start_server(ds, Path(ds.root) / "web.log")
    try:
        cookie = log_in(port, USER, PASSWORD)
        rss = [rss_mib(proc.pid)]  # the server's, logged in; then at the end
        page = Http(port, {"Cookie": cookie})
        api = Http(port, {"Authorization": f"Bearer {ds.token}"})
        direct = DirectQuery(ds.config, PAGE_LIMIT)
        cases = filters(ds)
        status, body, _ = api.request("GET", "/api/v1/calls")
        assert status == 200, body[:300]
        cases["next page (cursor)"] = {"after": json.loads(body)["next"]}
        rows: list[dict[str, Any]] = []
        for name, params in cases.items():
            qs = urllib.parse.urlencode(params)
            found = direct.run(params)
            for client, url in ((page, f"/calls?{qs}"), (api, f"/api/v1/calls?{qs}")):
                status, body, _ = client.request("GET", url)
                assert status == 200, f"{url}: {status} {body[:300]!r}"
            shown = len(json.loads(api.request("GET", f"/api/v1/calls?{qs}")[1])["calls"])
            assert shown == min(found, PAGE_LIMIT), f"{name}: API {shown} rows, query {found}"
            row: dict[str, Any] = {"filter": name, "rows": shown, "plan": direct.plan(params)}
            row |= timed(
                {
                    "query": lambda p=params: direct.run(p),
                    "page": lambda u=f"/calls?{qs}": page.request("GET", u),
                    "api": lambda u=f"/api/v1/calls?{qs}": api.request("GET", u),
                },
                samples,
                budget,
            )
            rows.append(row)
            print(f"  {name}: page p99 {p99(row['page']):.1f} ms", file=sys.stderr)
        audio = f"/recordings/{ds.long_recording}/audio"
        plain = "/bench-plain/long.wav"
        middle = ds.long_size // 2 // 2 * 2
        n_fb = 10 if args.quick else 50
        fb_ours = [first_byte_ms(port, audio, {"Cookie": cookie}, middle) for _ in range(n_fb)]
        fb_plain = [first_byte_ms(port, plain, {}, middle) for _ in range(n_fb)]
        span = ds.long_size - stream_bytes - 44
        ranges = [
            (
                44 + span * k // PLAYERS // 2 * 2,
                44 + span * k // PLAYERS // 2 * 2 + stream_bytes - 1,
            )
            for k in range(PLAYERS)
        ]
        ours_mb, ours_digests = stream(port, audio, cookie, ranges)
        plain_mb, plain_digests = stream(port, plain, "", ranges)
        assert ours_digests == plain_digests, "decrypted ranges differ from the plaintext's"
        if not args.quick:  # a second round each, the better kept (a shared machine)
            ours_mb = max(ours_mb, stream(port, audio, cookie, ranges)[0])
            plain_mb = max(plain_mb, stream(port, plain, "", ranges)[0])
        dpo = Http(port, {"Cookie": log_in(port, DPO, PASSWORD)})
        grown = growing_pages(direct.db, page, dpo, USER, samples, budget)
        rss.append(rss_mib(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    grown["passes"] = passes_logged(Path(ds.root) / "web.log")
    grown["rss"] = rss
    return report(ds, rows, fb_ours, fb_plain, ours_mb, plain_mb, stream_bytes, grown)


def report(
    ds: Any,
    rows: list[dict[str, Any]],
    fb_ours: list[float],
    fb_plain: list[float],
    ours_mb: float,
    plain_mb: float,
    stream_bytes: int,
    grown: dict[str, Any],
) -> int:
    rounds = min(len(r["page"]) for r in rows)
    print(f"\ncalls page and API, {ds.calls:,} calls ({rounds}+ requests each, in turns)")
    print(
        f"{'filter':<22}{'rows':>5} {'query p50/p99':>15} {'page p50/p99':>15} {'ratio':>6}"
        f" {'api p50/p99':>15}"
    )
    worst_ratio = 0.0
    for r in rows:
        q, pg, a = r["query"], r["page"], r["api"]
        ratio = p99(pg) / p99(q)
        worst_ratio = max(worst_ratio, ratio)
        print(
            f"{r['filter']:<22}{r['rows']:>5} {p50(q):>7.1f}/{p99(q):<7.1f}"
            f"{p50(pg):>7.1f}/{p99(pg):<7.1f}{ratio:>6.1f} {p50(a):>7.1f}/{p99(a):<7.1f}"
        )
    print("\nquery plans (EXPLAIN QUERY PLAN of the calls query):")
    for r in rows:
        print(f"  {r['filter']:<22} {r['plan']}")
    pages_p99 = max(p99(r["page"]) for r in rows)
    api_p99 = max(p99(r["api"]) for r in rows)
    ratio_stream = ours_mb / plain_mb
    print(f"\naudio: a one-hour recording ({ds.long_size / 1e6:.1f} MB WAV)")
    print(f"{'':<38}{'ours':>10}{'plain file':>12}")
    print(
        f"{'first byte, Range in the middle p50':<38}{p50(fb_ours):>8.1f}ms{p50(fb_plain):>10.1f}ms"
    )
    print(f"{'first byte p99':<38}{p99(fb_ours):>8.1f}ms{p99(fb_plain):>10.1f}ms")
    print(
        f"{f'{PLAYERS} players x {stream_bytes >> 20} MiB at once':<38}"
        f"{ours_mb:>6.0f}MB/s{plain_mb:>8.0f}MB/s   ratio {ratio_stream:.2f}"
    )
    g = grown["samples"]
    print(
        f"\npages that read what grows ({grown['audit_rows']:,} audit rows; in turns, "
        f"{len(g['audit page'])} each)"
    )
    print(
        f"{'':<12}{'at every load p50/p99':>24}{'page p50/p99':>16}{'ratio':>7}{'first load':>12}"
    )
    grown_ratio = 0.0
    for name in ("dashboard", "audit", "by person", "by retention"):
        q, pg = g[f"{name} query"], g[f"{name} page"]
        grown_ratio = max(grown_ratio, p99(pg) / p99(q))
        print(
            f"{name:<12}{p50(q):>16.1f}/{p99(q):<7.1f}{p50(pg):>8.1f}/{p99(pg):<7.1f}"
            f"{p99(pg) / p99(q):>7.1f}"
            + (f"{grown['first'][name]:>10.0f}ms" if name in grown["first"] else f"{'-':>12}")
        )
    print(
        "computed in the request before: the dashboard's totals "
        f"{grown['dashboard_pass_ms']:.0f} ms,"
        f" the audit check {grown['audit_check_s']:.1f} s, the log by retention before its"
        f" index {grown['by_retention_walk_ms']:.0f} ms; passes in the server: {grown['passes']}"
    )
    during = grown["calls_during_check"]
    if during:
        print(
            f"the calls page while the server's audit check ran: p50/p99 {p50(during):.1f}/"
            f"{p99(during):.1f} ms ({len(during)} requests)"
        )
    print(
        f"the server's RSS: {grown['rss'][0]:.1f} MiB logged in, {grown['rss'][1]:.1f} at the end"
    )
    grown_p99 = max(
        p99(g[f"{name} page"]) for name in ("dashboard", "audit", "by person", "by retention")
    )
    goals = {
        "pages p99 <= 100 ms": max(pages_p99, grown_p99) <= 100,
        "pages <= 2x the direct query": worst_ratio <= 2,
        "first byte <= 50 ms": p50(fb_ours) <= 50,
        "streaming >= 0.5x plain": ratio_stream >= 0.5,
    }
    print("\ngoals: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in goals.items()))
    print(
        json.dumps(
            {
                "bench": "web",
                "calls": ds.calls,
                "recordings": ds.recordings,
                "pages_p99_ms": round(pages_p99, 1),
                "pages_ratio_to_query": round(worst_ratio, 2),
                "pages_p50_ratio_to_query": round(
                    max(p50(r["page"]) / p50(r["query"]) for r in rows), 2
                ),
                "api_p99_ms": round(api_p99, 1),
                "query_p99_ms": round(max(p99(r["query"]) for r in rows), 1),
                "first_byte_ms": round(p50(fb_ours), 1),
                "first_byte_p99_ms": round(p99(fb_ours), 1),
                "plain_first_byte_ms": round(p50(fb_plain), 1),
                "stream_mb_s": round(ours_mb, 1),
                "plain_mb_s": round(plain_mb, 1),
                "stream_ratio_to_plain": round(ratio_stream, 2),
                "dashboard_p99_ms": round(p99(g["dashboard page"]), 1),
                "audit_page_p99_ms": round(p99(g["audit page"]), 1),
                "audit_by_person_p99_ms": round(p99(g["by person page"]), 1),
                "audit_by_retention_p99_ms": round(p99(g["by retention page"]), 1),
                "audit_by_retention_walk_ms": round(grown["by_retention_walk_ms"], 1),
                "grown_pages_ratio_to_query": round(grown_ratio, 2),
                "dashboard_pass_ms": round(grown["dashboard_pass_ms"], 1),
                "audit_check_s": round(grown["audit_check_s"], 2),
                "audit_rows": grown["audit_rows"],
                "background_passes": grown["passes"],
                "calls_page_during_check_p99_ms": round(p99(during), 1) if during else None,
                "server_rss_mib": [round(r, 1) for r in grown["rss"]],
                "per_filter_p99_ms": {
                    r["filter"]: [round(p99(r[k]), 1) for k in ("query", "page", "api")]
                    for r in rows
                },
                "goals_met": all(goals.values()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
