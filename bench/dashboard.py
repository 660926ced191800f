"""The dashboard's server time on a fleet-sized database.

A fresh database (a SQLite file in a temporary folder, and/or a fresh PostgreSQL database that
is dropped afterwards) is migrated with the real schema and filled in bulk with:
- `--devices` devices (default 10,000) with varied profiles, runtimes, agent versions, active
  bundles, status (about 85 % online), declared tags and operators' tags, a few deployments and
  events each;
- `--detections` detections (default 1,000,000) spread over the devices and the past week
  (on PostgreSQL into the daily partitions the controller keeps);
- health as the ingest stores it (controller.mqtt.records): every device's newest sample whole
  (`device_health`, some of them hot, throttled, under-voltage, dropping or with a skewed
  clock), one whole sample per minute as history (`health`) and per-minute rollups
  (`health_rollups`): a full week for one device, a day for `--dense` devices and the last
  `--history-minutes` for every other one (a week for every device would be 100 million rows).

Then the real app (controller.api.app with the dashboard installed) serves, in-process through
starlette's TestClient signed in with an operator's API token, `--requests` GETs of each page
after `--warmup` untimed ones: the fleet page (/), the devices page (default, a filter, a tag,
a sort and a deep page), device pages (the one with a week of history, dense ones and random
ones), and /api/auth/me as the baseline (authentication and the client's own cost, which every
page pays too). Each request's wall time is measured around the call; p50/p95 are printed per
variant and per page.

Prints one `RESULT db=… fleet_p95_ms=… devices_p95_ms=… device_p95_ms=… baseline_p95_ms=…`
line per database, the last line of the output being the last database's; exits 1 when a page's
p95 is over `--limit-ms` (150).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from pgdb import create_database, drop_database
from sqlalchemy import select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from controller.api.app import ApiContext, create_app
from controller.auth.tokens import issue_token
from controller.auth.users import Role, create_user
from controller.bundles.chunks import ChunkServer
from controller.bundles.repository import BundleRepository, release_verifier
from controller.dashboard import install as install_dashboard
from controller.dashboard import queries
from controller.db import Device, DeviceHealth, make_engine, session_factory, upgrade_database
from controller.fleet.deployments import DeploymentService
from controller.mqtt.commands import CommandSender
from controller.mqtt.ingest import IngestStats
from controller.mqtt.retention import ensure_partitions
from controller.mqtt.session import Publisher
from controller.settings import MqttSettings
from protocol.messages import Health
from protocol.topics import Topics

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

WEEK_S = 7 * 86400
DAY_S = 86400
CHUNK = 20_000
PASSWORD = "bench password, long enough"

PROFILES = {
    # profile: (runtimes it has, cameras, memory MB)
    "rpi5": (("litert", "onnx-cpu"), 1, 8192.0),
    "rpi4": (("litert",), 1, 4096.0),
    "jetson-orin-nano": (("tensorrt", "onnx-cuda", "litert"), 2, 8192.0),
    "jetson-xavier-nx": (("tensorrt", "litert"), 2, 8192.0),
    "x86-openvino": (("openvino", "onnx-cpu"), 4, 16384.0),
    "coral-devboard": (("edgetpu", "litert"), 1, 4096.0),
}
PROFILE_WEIGHTS = (40, 15, 20, 5, 12, 8)
AGENT_VERSIONS = ("1.4.2", "1.5.0", "1.5.1", "1.6.0-rc1")
BUNDLES = (("face", 3), ("face", 4), ("person", 7), ("person", 8), ("vehicle", 2))
SITES = ("lobby", "dock", "gate", "store", "yard", "office", "garage", "warehouse")
LABELS = ("person", "face", "car", "truck", "bicycle", "dog", "forklift")
EVENT_KINDS = ("deploy_offered", "downloading", "verified", "installing", "probation", "running")


def _digest(name: str, version: int) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{name}@{version}").hex * 2


# ---- the fleet ------------------------------------------------------------------------------


@dataclass
class FleetPlan:
    devices: int
    detections: int
    history_minutes: int
    dense: int
    now: float
    seed: int
    ids: list[str] = field(default_factory=list)
    week_device: str = ""
    dense_devices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = [f"{SITES[i % len(SITES)]}-cam-{i:05d}" for i in range(self.devices)]
        self.week_device = self.ids[0]
        self.dense_devices = self.ids[1 : 1 + self.dense]

    def history_start(self, index: int) -> float:
        """When the device's stored history starts."""
        if index == 0:
            return self.now - WEEK_S
        if index <= self.dense:
            return self.now - DAY_S
        return self.now - 60 * self.history_minutes


@dataclass(frozen=True)
class DeviceShape:
    id: str
    online: bool
    profile: str
    runtimes: tuple[str, ...]
    cameras: list[str]
    mem_total: float
    bundle: tuple[str, int] | None
    runtime: str | None
    last_seen: float
    # what its newest health says (alerts on the fleet page)
    hot: bool
    throttled: bool
    under_voltage: bool
    dropping: bool
    skew_s: float


def _shape(plan: FleetPlan, index: int, rng: random.Random) -> DeviceShape:
    profile = rng.choices(list(PROFILES), PROFILE_WEIGHTS)[0]
    runtimes, ncam, mem = PROFILES[profile]
    online = index < 1 + plan.dense or rng.random() < 0.85
    bundle = rng.choice(BUNDLES) if rng.random() < 0.93 else None
    return DeviceShape(
        id=plan.ids[index],
        online=online,
        profile=profile,
        runtimes=runtimes,
        cameras=[f"cam{c}" for c in range(ncam)],
        mem_total=mem,
        bundle=bundle,
        runtime=runtimes[0] if bundle else None,
        last_seen=plan.now - (rng.uniform(0, 30) if online else rng.uniform(600, 5 * DAY_S)),
        hot=rng.random() < 0.03,
        throttled=rng.random() < 0.02,
        under_voltage=profile.startswith("rpi") and rng.random() < 0.03,
        dropping=rng.random() < 0.01,
        skew_s=rng.choice((-95.0, 240.0, 61.0)) if rng.random() < 0.01 else rng.uniform(-2, 2),
    )


def _health(shape: DeviceShape, ts: float, rng: random.Random, latest: bool) -> dict[str, Any]:
    """One health payload as the ingest stores it (Health.model_dump(mode="json") shape)."""
    hot = latest and shape.hot
    base_temp = 52.0 + rng.uniform(-6, 12)
    temps = {"cpu": round(base_temp + (35 if hot else 0), 1), "soc": round(base_temp - 3, 1)}
    cams = []
    for cam in shape.cameras:
        fps_in = 15.0
        processed = round(rng.uniform(8.0, 15.0), 2)
        cams.append(
            {
                "camera": cam,
                "connected": True,
                "fps_in": fps_in,
                "fps_processed": processed,
                "frames_in": int(ts) % 1_000_000,
                "frames_processed": int(ts * 0.8) % 1_000_000,
                "frames_skipped": int(ts * 0.2) % 1_000_000,
                "skipped_busy": 12,
                "skipped_motion": 400,
                "inference_ms": round(rng.uniform(14.0, 60.0), 1),
                "latency_ms": round(rng.uniform(30.0, 90.0), 1),
                "reconnects": 0,
                "last_error": "",
                "since": ts - 3600,
            }
        )
    throttled = latest and shape.throttled
    under = latest and shape.under_voltage
    cpu = round(rng.uniform(15.0, 90.0), 1)
    return {
        "v": "1.0",
        "id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "ts": ts,
        "device": shape.id,
        "type": "health",
        "uptime_s": 86400.0,
        "cpu_percent": cpu,
        "load1": round(cpu / 25, 2),
        "mem_used_mb": round(shape.mem_total * rng.uniform(0.3, 0.8), 1),
        "mem_total_mb": shape.mem_total,
        "disk_free_mb": 12000.0,
        "temperatures_c": temps,
        "cameras": cams,
        "outbox_depth": 0,
        "outbox_dropped": 17 if latest and shape.dropping else 0,
        "mqtt_reconnects": 0,
        "cpu_cores_percent": [cpu, cpu, cpu, cpu],
        "accelerators": [],
        "throttling": {
            "under_voltage_now": under,
            "throttled_now": throttled,
            "freq_capped_now": throttled,
            "under_voltage_occurred": under,
        },
        "power_w": {"total": 6.5},
        "unavailable": {},
        "bundle_stats": None,
    }


def _rollup(device: str, payload: dict[str, Any]) -> tuple[Any, ...]:
    cams = payload["cameras"]
    cpu = payload["cpu_percent"]
    return (
        device,
        int(payload["ts"] // 60),
        1,
        cpu,
        cpu,
        max(payload["temperatures_c"].values()),
        sum(c["fps_in"] for c in cams),
        sum(c["fps_processed"] for c in cams),
        max((c["inference_ms"] for c in cams), default=0.0),
        payload["outbox_depth"],
    )


COLUMNS = {
    "devices": (
        "id, online, status, profile, agent_version, runtimes, cameras, declared_tags, "
        "active_name, active_version, active_digest, active_runtime, active_reason, "
        "first_seen, last_seen"
    ),
    "device_inventory": "device, tags, decommissioned",
    "bundles": "digest, name, version, size, chunk_size, manifest, path, created",
    "deployments": "id, device, bundle, cmd_id, status, reason, created, updated",
    "events": "id, device, kind, level, bundle, cmd_id, reason, message, ts, received",
    "detections": (
        "id, device, camera, track_id, event, label, score, x1, y1, x2, y2, ts, model, "
        "runtime, snapshot, received"
    ),
    "health": "msg_id, device, ts, payload, received",
    "device_health": "device, msg_id, ts, payload, received",
    "health_rollups": (
        "device, minute, samples, cpu_sum, cpu_max, temp_max, fps_in_sum, fps_processed_sum, "
        "inference_ms_max, outbox_depth_max"
    ),
}


class Loader:
    """Bulk rows into one table at a time: executemany on SQLite, COPY on PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self.counts: dict[str, int] = {}

    def load(self, table: str, rows: Iterator[tuple[Any, ...]]) -> None:
        columns = COLUMNS[table]
        n = 0
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if self.pg:
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                        n += 1
            else:
                marks = ", ".join("?" for _ in columns.split(","))
                sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
                chunk: list[tuple[Any, ...]] = []
                for row in rows:
                    chunk.append(row)
                    if len(chunk) >= CHUNK:
                        cur.executemany(sql, chunk)
                        n += len(chunk)
                        chunk = []
                if chunk:
                    cur.executemany(sql, chunk)
                    n += len(chunk)
            raw.commit()
        finally:
            raw.close()
        self.counts[table] = self.counts.get(table, 0) + n


def populate(engine: Engine, plan: FleetPlan) -> dict[str, int]:
    rng = random.Random(plan.seed)
    pg = engine.dialect.name == "postgresql"

    def flag(value: bool) -> Any:
        return value if pg else int(value)

    shapes = [_shape(plan, i, rng) for i in range(plan.devices)]
    loader = Loader(engine)
    now = plan.now

    # a sample validates as the wire model, so the payloads have the ingest's shape
    Health.model_validate_json(json.dumps(_health(shapes[0], now, rng, latest=True)))

    loader.load(
        "bundles",
        (
            (
                _digest(name, version),
                name,
                version,
                4_000_000,
                65536,
                json.dumps({"name": name, "version": version, "variants": []}),
                f"bundles/{_digest(name, version)}.bundle",
                now - WEEK_S - 86400,
            )
            for name, version in BUNDLES
        ),
    )

    def devices() -> Iterator[tuple[Any, ...]]:
        for i, s in enumerate(shapes):
            runtimes = [
                {"key": r, "available": True, "reason": "measured" if k == 0 else "fallback"}
                for k, r in enumerate(s.runtimes)
            ]
            declared = sorted({s.id.split("-", 1)[0], f"floor-{i % 5}"})
            name, version = s.bundle if s.bundle else (None, None)
            yield (
                s.id,
                flag(s.online),
                "online" if s.online else "offline",
                s.profile,
                AGENT_VERSIONS[i % len(AGENT_VERSIONS)],
                json.dumps(runtimes),
                json.dumps(s.cameras),
                json.dumps(declared),
                name,
                version,
                _digest(name, version) if name and version else None,
                s.runtime,
                f"{s.runtime}: fastest measured on {s.profile}" if s.runtime else None,
                now - 30 * DAY_S,
                s.last_seen,
            )

    loader.load("devices", devices())

    def inventory() -> Iterator[tuple[Any, ...]]:
        for i, s in enumerate(shapes):
            if i % 2:
                continue
            tags = sorted({f"zone-{i % 40}", "outdoor" if i % 3 == 0 else "indoor"})
            yield s.id, json.dumps(tags), (now - DAY_S if i % 500 == 0 else None)

    loader.load("device_inventory", inventory())

    def deployments() -> Iterator[tuple[Any, ...]]:
        for i, s in enumerate(shapes):
            if s.bundle is None:
                continue
            for k, (status, age) in enumerate((("running", 3 * DAY_S), ("failed", 5 * DAY_S))):
                if k == 1 and i % 4:
                    continue
                dep = f"{i:05d}{k}".ljust(32, "d")
                created = now - age - i
                yield (
                    dep,
                    s.id,
                    _digest(*(s.bundle if k == 0 else BUNDLES[i % len(BUNDLES)])),
                    uuid.UUID(int=rng.getrandbits(128)).hex,
                    status,
                    "" if status == "running" else "probation: fps below gate",
                    created,
                    created + 600,
                )

    loader.load("deployments", deployments())

    def events() -> Iterator[tuple[Any, ...]]:
        for i, s in enumerate(shapes):
            if s.bundle is None:
                continue
            start = now - 3 * DAY_S - i
            digest = _digest(*s.bundle)
            for k, kind in enumerate(EVENT_KINDS):
                ts = start + 20 * k
                yield (
                    uuid.UUID(int=rng.getrandbits(128)).hex,
                    s.id,
                    kind,
                    "info",
                    digest,
                    None,
                    "ok" if kind == "running" else None,
                    f"{kind} {s.bundle[0]}@{s.bundle[1]}",
                    ts,
                    ts + 0.2,
                )

    loader.load("events", events())

    if pg:
        # the daily partitions a running controller made as the week went by
        with session_factory(engine)() as db:
            ensure_partitions(db, now - WEEK_S - DAY_S, days_ahead=9)
            db.commit()

    def detections() -> Iterator[tuple[Any, ...]]:
        per_device = max(1, plan.detections // plan.devices)
        for n in range(plan.detections):
            i = (n // per_device) % plan.devices
            s = shapes[i]
            ts = now - rng.random() * WEEK_S
            x1, y1 = rng.random() * 0.6, rng.random() * 0.6
            model = f"{s.bundle[0]}@{s.bundle[1]}" if s.bundle else ""
            yield (
                uuid.UUID(int=rng.getrandbits(128)).hex,
                s.id,
                s.cameras[n % len(s.cameras)],
                n % 5000,
                ("start", "update", "update", "end")[n % 4],
                LABELS[n % len(LABELS)],
                round(0.5 + rng.random() * 0.5, 3),
                x1,
                y1,
                x1 + 0.2,
                y1 + 0.3,
                ts,
                model,
                s.runtime or "",
                uuid.UUID(int=rng.getrandbits(128)).hex if n % 97 == 0 else None,
                ts + rng.uniform(0.05, 2.0),
            )

    loader.load("detections", detections())

    def history() -> Iterator[tuple[str, dict[str, Any]]]:
        # each device's own generator: the rollups' pass sees the very samples history's did
        for i, s in enumerate(shapes):
            if not s.online:
                continue
            own = random.Random(plan.seed * 1_000_003 + i)
            ts = plan.history_start(i) + own.uniform(0, 60)
            while ts < now - 60:
                yield s.id, _health(s, ts, own, latest=False)
                ts += 60

    def health_rows() -> Iterator[tuple[Any, ...]]:
        for device, payload in history():
            yield payload["id"], device, payload["ts"], json.dumps(payload), payload["ts"] + 0.3

    loader.load("health", health_rows())

    def rollup_rows() -> Iterator[tuple[Any, ...]]:
        for device, payload in history():
            yield _rollup(device, payload)

    loader.load("health_rollups", rollup_rows())

    def latest_rows() -> Iterator[tuple[Any, ...]]:
        for i, s in enumerate(shapes):
            ts = s.last_seen if not s.online else now - rng.uniform(1, 10)
            payload = _health(s, ts, rng, latest=True)
            # values at and around the alerts' thresholds (check_alerts compares them)
            edge = i % 101
            if edge == 1:
                payload["temperatures_c"]["soc"] = 80.0
            elif edge == 2:
                payload["temperatures_c"]["soc"] = 79.99
            elif edge == 3:
                payload["throttling"]["soft_temp_limit_occurred"] = True
            elif edge == 4:
                payload["temperatures_c"]["board"] = "95"  # not a number: no alert
            yield s.id, payload["id"], ts, json.dumps(payload), ts + s.skew_s

    loader.load("device_health", latest_rows())
    if pg:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return loader.counts


# ---- the app --------------------------------------------------------------------------------


def make_app(sessions: sessionmaker[Session], workdir: Path) -> FastAPI:
    """The controller's API with the dashboard, as the controller builds it, minus MQTT."""
    verify = release_verifier(workdir / "absent-trust.json", 1 << 20)
    store = BundleRepository(workdir / "bundles", sessions, verify, 65536)
    publisher = Publisher(MqttSettings(port=1), 2, "bench")  # never started
    topics = Topics()
    commands = CommandSender(publisher, topics)
    chunks = ChunkServer(publisher, store, topics, 0)
    deployer = DeploymentService(sessions, store, commands, chunks)
    ctx = ApiContext(sessions, store, deployer, commands, IngestStats(), publisher, chunks, 100_000)
    app = create_app(ctx)
    install_dashboard(app)
    return app


def check_alerts(sessions: sessionmaker[Session]) -> int:
    """The fleet page's alerts equal those of every online device's whole newest health sample
    (the page reads only the samples the database finds may alert); returns how many."""
    with sessions() as db:
        view = queries.fleet(db)
        every: list[queries.Alert] = []
        rows = db.execute(
            select(
                DeviceHealth.device, DeviceHealth.payload, DeviceHealth.ts, DeviceHealth.received
            )
            .join(Device, Device.id == DeviceHealth.device)
            .where(Device.online.is_(True))
            .order_by(DeviceHealth.device)
        )
        for device, payload, ts, received in rows:
            every.extend(queries.health_alerts(device, payload, ts, received))
    if view.alerts_total != len(every) or view.alerts != every[: queries.ALERTS_SHOWN]:
        raise RuntimeError(
            f"fleet alerts differ: page {view.alerts_total}, every sample {len(every)}"
        )
    return len(every)


def operator_token(sessions: sessionmaker[Session]) -> str:
    with sessions() as db:
        user = create_user(db, f"bench-{uuid.uuid4().hex[:8]}", PASSWORD, Role.OPERATOR)
        _row, secret = issue_token(db, user, "bench", Role.OPERATOR, 3600)
        db.commit()
    return secret


@dataclass
class Timing:
    page: str
    variant: str
    ms: list[float]

    def pct(self, p: float) -> float:
        return _percentile(self.ms, p)


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(
    client: TestClient,
    page: str,
    variant: str,
    urls: Callable[[int], str],
    n: int,
    warmup: int,
) -> Timing:
    ms: list[float] = []
    for k in range(warmup + n):
        url = urls(k)
        t0 = time.perf_counter()
        resp = client.get(url)
        elapsed = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"GET {url}: {resp.status_code} {resp.text[:300]}")
        if k >= warmup:
            ms.append(elapsed)
    return Timing(page, variant, ms)


def run_pages(app: FastAPI, token: str, plan: FleetPlan, n: int, warmup: int) -> list[Timing]:
    rng = random.Random(plan.seed + 1)
    randoms = rng.sample(plan.ids, min(len(plan.ids), n + warmup))
    dense = plan.dense_devices or [plan.week_device]
    headers = {"Authorization": f"Bearer {token}"}
    timings: list[Timing] = []
    deep = max(1, plan.devices // 50 - 2)
    with warnings.catch_warnings():
        # starlette's notice about its test client's transport, irrelevant to a timing run
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    with TestClient(app, base_url="http://localhost", headers=headers) as client:
        jobs: list[tuple[str, str, Callable[[int], str]]] = [
            ("baseline", "/api/auth/me", lambda k: "/api/auth/me"),
            ("fleet", "/", lambda k: "/"),
            ("devices", "default", lambda k: "/devices"),
            ("devices", "status+profile", lambda k: "/devices?status=offline&profile=rpi5"),
            ("devices", "tag", lambda k: "/devices?tag=zone-7"),
            ("devices", "search", lambda k: "/devices?q=dock-cam-01"),
            ("devices", "sort last_seen", lambda k: "/devices?sort=last_seen&desc=1"),
            ("devices", f"page {deep}", lambda k: f"/devices?page={deep}"),
            ("devices", "sort bundle p3", lambda k: "/devices?sort=bundle&page=3"),
            ("device", "week of history", lambda k: f"/devices/{plan.week_device}"),
            ("device", "day of history", lambda k: f"/devices/{dense[k % len(dense)]}"),
            ("device", "random", lambda k: f"/devices/{randoms[k % len(randoms)]}"),
        ]
        for page, variant, urls in jobs:
            timing = measure(client, page, variant, urls, n, warmup)
            timings.append(timing)
            print(
                f"  {page:<9} {variant:<18} p50={timing.pct(50):7.1f} ms "
                f"p95={timing.pct(95):7.1f} ms max={max(timing.ms):7.1f} ms",
                flush=True,
            )
    return timings


def profile_queries(sessions: sessionmaker[Session], which: str, plan: FleetPlan) -> None:
    """cProfile of a page's read model, called here (the test client runs the app in another
    thread, where a profiler in this one sees nothing)."""
    import cProfile
    import pstats

    calls: dict[str, Callable[[Session], object]] = {
        "fleet": queries.fleet,
        "devices": lambda db: queries.device_page(db, queries.DeviceFilter()),
        "device": lambda db: queries.device_detail(db, plan.week_device, time.time()),
    }
    call = calls[which]
    prof = cProfile.Profile()
    with sessions() as db:
        call(db)
        prof.enable()
        for _ in range(10):
            call(db)
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


# ---- databases ------------------------------------------------------------------------------


def bench_one(db: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    pg_name = None
    if db == "sqlite":
        url = f"sqlite:///{workdir / 'dashboard.db'}"
    else:
        pg_name, url = create_database()
    try:
        print(f"== {db}: {make_url(url).render_as_string(hide_password=True)}", flush=True)
        upgrade_database(url)
        engine = make_engine(url, pool_size=5) if db == "postgresql" else make_engine(url)
        try:
            plan = FleetPlan(
                args.devices,
                args.detections,
                args.history_minutes,
                args.dense,
                time.time(),
                args.seed,
            )
            t0 = time.monotonic()
            counts = populate(engine, plan)
            took = time.monotonic() - t0
            print(
                f"populated in {took:.0f} s: "
                + ", ".join(f"{table}={n}" for table, n in counts.items()),
                flush=True,
            )
            sessions = session_factory(engine)
            print(f"fleet alerts: {check_alerts(sessions)}, as every sample gives", flush=True)
            app = make_app(sessions, workdir / db)
            timings = run_pages(app, operator_token(sessions), plan, args.requests, args.warmup)
            if args.profile:
                profile_queries(sessions, args.profile, plan)
        finally:
            engine.dispose()
    finally:
        if pg_name is not None:
            drop_database(pg_name)
    out: dict[str, float] = {}
    for page in ("fleet", "devices", "device", "baseline"):
        ms = [v for t in timings if t.page == page for v in t.ms]
        out[f"{page}_p50_ms"] = _percentile(ms, 50)
        out[f"{page}_p95_ms"] = _percentile(ms, 95)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--detections", type=int, default=1_000_000)
    ap.add_argument(
        "--history-minutes",
        type=int,
        default=30,
        help="per-minute health history of an ordinary online device",
    )
    ap.add_argument("--dense", type=int, default=20, help="devices with a day of history")
    ap.add_argument("--requests", type=int, default=50, help="timed requests per variant")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--limit-ms", type=float, default=150.0)
    ap.add_argument(
        "--profile",
        choices=("fleet", "devices", "device"),
        default=None,
        help="after timing, print a cProfile of that page's database reads",
    )
    args = ap.parse_args(argv)
    if args.devices < 2 or args.detections < 0 or args.requests < 1 or args.warmup < 0:
        ap.error("--devices must be at least 2; counts must not be negative")
    if args.dense >= args.devices:
        ap.error("--dense must be below --devices")
    dbs = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    results: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-dashboard-bench-") as tmp:
        for db in dbs:
            results.append((db, bench_one(db, args, Path(tmp))))
    failed = False
    for db, r in results:
        over = [p for p in ("fleet", "devices", "device") if r[f"{p}_p95_ms"] > args.limit_ms]
        failed = failed or bool(over)
        print(
            f"RESULT db={db} fleet_p95_ms={r['fleet_p95_ms']:.1f} "
            f"devices_p95_ms={r['devices_p95_ms']:.1f} device_p95_ms={r['device_p95_ms']:.1f} "
            f"baseline_p95_ms={r['baseline_p95_ms']:.1f} limit_ms={args.limit_ms:.0f} "
            f"ok={'no' if over else 'yes'}",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
