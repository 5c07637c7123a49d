"""Prometheus metrics (prometheus-client) for the agent and the controller.

Most values are read at scrape time from what the daemons already keep — the NETCONF
server's RFC 6022 counters and sessions, and the operational state that `<get>` returns
(SA counters from `ietf-i2nsf-ikeless`, policy status from `i2nsf-flow-policy`) — so
`/metrics` can never disagree with NETCONF. Event counts the daemons keep anyway (the
controller's rekeys, installs, deletes) are read from their stats; transaction latencies
are observed where they happen through `Metrics.observe_transaction`.

Each daemon has its own registry (several daemons in one test process must not share one).
`Metrics.register(collector)` is the hook for later subsystems (SFC counters): any object
with a `collect()` yielding prometheus metric families.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from lxml import etree
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from netconf_core.server import NetconfServer

log = logging.getLogger(__name__)

IKELESS_NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
FP_NS = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
SADB_NS = "urn:i2nsf-sdn:yang:i2nsf-sadb"
# Transactions take milliseconds (one NSF, loopback) to tens of seconds (confirm timeouts).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The registry of one daemon and the event metrics the code updates directly."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=False)
        self.transactions = Histogram(
            "transaction_seconds", "Two-phase provisioning transactions across NSFs: "
            "candidate edits, confirmed commit and confirm, by outcome", ["outcome"],
            namespace=namespace, buckets=LATENCY_BUCKETS, registry=self.registry)

    def register(self, collector: Any) -> None:
        """Add a collector (an object with `collect()`), e.g. the SFC counters."""
        self.registry.register(collector)

    def observe_transaction(self, seconds: float, ok: bool) -> None:
        self.transactions.labels("ok" if ok else "failed").observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    """Adapter: a function yielding metric families, for `CollectorRegistry.register`."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._fn()
        except Exception:  # a scrape must not take the daemon down, nor lose other metrics
            log.exception("metrics collector failed")


def netconf_collector(ns: str, server_ref: Callable[[], NetconfServer | None]) -> _Collector:
    """Sessions and RFC 6022 counters of the NETCONF server."""

    def collect() -> Iterator[Metric]:
        srv = server_ref()
        if srv is None:
            return
        st = srv.stats
        g = GaugeMetricFamily(f"{ns}_netconf_sessions", "Open NETCONF sessions")
        g.add_metric([], sum(1 for s in srv.sessions.values() if s.state == "open"))
        yield g
        g = GaugeMetricFamily(f"{ns}_netconf_subscriptions",
                              "Notification subscriptions (NETCONF and RESTCONF streams)")
        g.add_metric([], len(srv.bus.subscriptions))
        yield g
        for name, help_, value in (
            ("netconf_sessions", "NETCONF sessions started", st.in_sessions),
            ("netconf_dropped_sessions", "NETCONF sessions dropped", st.dropped_sessions),
            ("netconf_bad_hellos", "NETCONF sessions refused for a bad hello", st.in_bad_hellos),
            ("netconf_rpcs", "NETCONF rpcs received", st.counters.in_rpcs),
            ("netconf_bad_rpcs", "Malformed NETCONF rpcs", st.counters.in_bad_rpcs),
            ("netconf_rpc_errors", "rpc-error replies sent", st.counters.out_rpc_errors),
            ("netconf_notifications", "Notifications sent", st.counters.out_notifications),
        ):
            c = CounterMetricFamily(f"{ns}_{name}", help_)
            c.add_metric([], value)
            yield c

    return _Collector(collect)


def _state(srv: NetconfServer, tag: str) -> list[etree._Element]:
    with srv.ds_lock:
        data = srv.datastores.get_state(lambda t: t == tag)
    return [c for c in data if c.tag == tag]


def _int(el: etree._Element | None, path: str) -> int:
    if el is None:
        return 0
    text = el.findtext(path)
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def sa_collector(ns: str, server_ref: Callable[[], NetconfServer | None]) -> _Collector:
    """Agent: SPD/SAD entries and per-SA packet, byte and drop counters, from the
    `ietf-i2nsf-ikeless` operational state the appliers report."""
    q = f"{{{IKELESS_NS}}}"

    def collect() -> Iterator[Metric]:
        srv = server_ref()
        if srv is None or srv._datastores is None:
            return
        trees = _state(srv, q + "ipsec-ikeless")
        spd = GaugeMetricFamily(f"{ns}_spd_entries", "SPD entries configured")
        sad = GaugeMetricFamily(f"{ns}_sad_entries", "SAD entries configured")
        packets = CounterMetricFamily(f"{ns}_sa_packets", "Packets through the SA", labels=["sa"])
        octets = CounterMetricFamily(f"{ns}_sa_bytes", "Bytes through the SA", labels=["sa"])
        replay = CounterMetricFamily(f"{ns}_sa_replay_dropped",
                                     "Packets dropped by the SA's anti-replay check",
                                     labels=["sa"])
        failed = CounterMetricFamily(f"{ns}_sa_failed",
                                     "Packets dropped by the SA: integrity or decryption "
                                     "failed", labels=["sa"])
        by_reason = CounterMetricFamily(f"{ns}_sa_drops", "Inbound packets of the SA dropped, "
                                        "by reason (i2nsf-sadb sa-drops)",
                                        labels=["sa", "reason"])
        n_spd = n_sad = 0
        for tree in trees:
            n_spd += len(tree.findall(f"{q}spd/{q}spd-entry"))
            for ent in tree.iterfind(f"{q}sad/{q}sad-entry"):
                n_sad += 1
                name = ent.findtext(q + "name") or "?"
                st = ent.find(q + "ipsec-sa-state")
                if st is None:
                    continue
                packets.add_metric([name], _int(st, f"{q}sa-lifetime-current/{q}packets"))
                octets.add_metric([name], _int(st, f"{q}sa-lifetime-current/{q}bytes"))
                replay.add_metric([name], _int(st, f"{q}replay-stats/{q}packet-dropped"))
                failed.add_metric([name], _int(st, f"{q}replay-stats/{q}failed"))
                drops = st.find(f"{{{SADB_NS}}}sa-drops")
                for c in drops if drops is not None else ():
                    if isinstance(c.tag, str):
                        by_reason.add_metric([name, c.tag.rpartition("}")[2]],
                                             _int(drops, c.tag))
        spd.add_metric([], n_spd)
        sad.add_metric([], n_sad)
        yield from (spd, sad, packets, octets, replay, failed, by_reason)
        stats = _state(srv, f"{{{SADB_NS}}}sadb-statistics")
        if stats:
            nsf = CounterMetricFamily(f"{ns}_drops", "Packets the NSF dropped, by reason "
                                      "(i2nsf-sadb sadb-statistics; also those no SA can be "
                                      "named for)", labels=["reason"])
            for c in stats[0]:
                if isinstance(c.tag, str):
                    nsf.add_metric([c.tag.rpartition("}")[2]], _int(stats[0], c.tag))
            yield nsf

    return _Collector(collect)


def stats_collector(ns: str, stats_ref: Callable[[], Any],
                    help_: dict[str, str]) -> _Collector:
    """Integer fields of a stats dataclass (e.g. the controller's rekeys done) as counters;
    `help_` names the fields to export and says what each counts."""

    def collect() -> Iterator[Metric]:
        stats = stats_ref()
        if stats is None:
            return
        for name, text in help_.items():
            value = getattr(stats, name, None)
            if isinstance(value, int):
                c = CounterMetricFamily(f"{ns}_{name}", text)
                c.add_metric([], value)
                yield c

    return _Collector(collect)


POLICY_STATUSES = ("pending", "active", "rekeying", "failed", "deleting")
SESSION_STATES = ("connecting", "connected", "disconnected", "host-key-mismatch", "auth-failed")


def flow_collector(ns: str, server_ref: Callable[[], NetconfServer | None]) -> _Collector:
    """Controller: policies by status, SAs, NSF sessions by state — from the
    `flow-protection-state` and `nsfs/nsf/session` state served over NETCONF."""
    q = f"{{{FP_NS}}}"

    def collect() -> Iterator[Metric]:
        srv = server_ref()
        if srv is None or srv._datastores is None:
            return
        with srv.ds_lock:
            data = srv.datastores.get_state(
                lambda t: t in (q + "flow-protection-state", q + "flow-protection"))
        pol = GaugeMetricFamily(f"{ns}_policies", "Flow protection policies by status",
                                labels=["status"])
        counts = dict.fromkeys(POLICY_STATUSES, 0)
        sas = 0
        rw = dict[str, int]()
        for st in data.iterfind(q + "flow-protection-state"):
            for p in st.iterfind(q + "policy"):
                status = p.findtext(q + "status") or "unknown"
                counts[status] = counts.get(status, 0) + 1
                sas += len(p.findall(q + "sa"))
            for r in st.iterfind(q + "road-warrior"):
                status = r.findtext(q + "status") or "unknown"
                rw[status] = rw.get(status, 0) + 1
        for status, n in sorted(counts.items()):
            pol.add_metric([status], n)
        yield pol
        g = GaugeMetricFamily(f"{ns}_sas", "SAs installed by the controller (one per "
                              "direction per flow, counted once per NSF holding it)")
        g.add_metric([], sas)
        yield g
        if rw:
            g = GaugeMetricFamily(f"{ns}_road_warriors", "Road warriors by status",
                                  labels=["status"])
            for status, n in sorted(rw.items()):
                g.add_metric([status], n)
            yield g
        sess = GaugeMetricFamily(f"{ns}_nsf_sessions", "Southbound NSF sessions by state",
                                 labels=["state"])
        states = dict.fromkeys(SESSION_STATES, 0)
        for nsf in data.iterfind(f"{q}flow-protection/{q}nsfs/{q}nsf"):
            s = nsf.findtext(f"{q}session/{q}state") or "unknown"
            states[s] = states.get(s, 0) + 1
        for s, n in sorted(states.items()):
            sess.add_metric([s], n)
        yield sess

    return _Collector(collect)


class MetricsHttp:
    """`GET /metrics` (Prometheus text format) on its own port; plain HTTP, by default on
    127.0.0.1 only (a scraper on the host or a reverse proxy)."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9100) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class MetricsConfig:
    """`[metrics]` of the agent's and the controller's configuration file:

        [metrics]
        host = "127.0.0.1"   # where /metrics listens (plain HTTP)
        port = 9100          # 0: any free port
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9100) -> None:
        self.host = host
        self.port = port

    @classmethod
    def parse(cls, table: dict[str, Any]) -> MetricsConfig:
        from netconf_core.configfile import ConfigError, check_table

        check_table(table, {"host": str, "port": int}, "metrics")
        cfg = cls(table.get("host", "127.0.0.1"), table.get("port", 9100))
        if not 0 <= cfg.port <= 65535:
            raise ConfigError(f"[metrics] port {cfg.port} out of range")
        return cfg


async def start_metrics(namespace: str, config: MetricsConfig,
                        server_ref: Callable[[], NetconfServer | None],
                        *extra: Callable[[str, Callable[[], NetconfServer | None]], _Collector]
                        ) -> tuple[Metrics, MetricsHttp]:
    """A daemon's registry with the NETCONF collector and `extra` ones, served on HTTP."""
    m = Metrics(namespace)
    m.register(netconf_collector(namespace, server_ref))
    for make in extra:
        m.register(make(namespace, server_ref))
    http = MetricsHttp(m, config.host, config.port)
    await http.start()
    return m, http
