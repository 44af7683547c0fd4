"""Prometheus metrics (prometheus-client), in one registry per process so tests can make their own.

Names are stable and carry base units (`_seconds`, `_total`, `_requests_per_second`); the
deploy/README.md explains each. Labels never carry ids, tokens or messages, and none is called `job` or
`instance` (Prometheus's own target labels): syncd's job is `syncd_job`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """All of syncd's metrics, registered in `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("syncd_kantata_requests_total",
                                "Kantata API requests by endpoint, method and HTTP status "
                                "(status 0 = no answer: timeout or reset)",
                                ["endpoint", "method", "status"], registry=r)
        self.retries = Counter("syncd_kantata_retries_total",
                               "Requests retried after a transient failure", ["endpoint"],
                               registry=r)
        self.throttled = Counter("syncd_kantata_throttled_total", "429 answers received",
                                 registry=r)
        self.rate_limit = Gauge("syncd_kantata_rate_limit_requests_per_second",
                                "Current adaptive request ceiling (+Inf until the first 429 when none is set)",
                                registry=r)
        self.rate_limit_floor = Gauge("syncd_kantata_rate_limit_floor_requests_per_second",
                                      "The lowest the adaptive ceiling goes after 429s",
                                      registry=r)
        self.rows_upserted = Counter("syncd_rows_upserted_total",
                                     "Time entries written to the mirror", ["syncd_job"], registry=r)
        self.rows_rejected = Counter("syncd_rows_rejected_total",
                                     "Records from Kantata that could not be stored", ["syncd_job"],
                                     registry=r)
        self.rows_altered = Counter("syncd_rows_altered_total",
                                    "Records from Kantata stored with text replaced that "
                                    "PostgreSQL cannot hold (kantata.text_alterations)",
                                    ["syncd_job"], registry=r)
        self.rows_marked_deleted = Counter("syncd_rows_marked_deleted_total",
                                           "Mirror rows marked deleted by reconciliation",
                                           registry=r)
        self.watermark_lag = Gauge("syncd_watermark_lag_seconds",
                                   "Now minus the incremental watermark", registry=r)
        self.outbox_rows = Gauge("syncd_outbox_rows", "Outbox rows by status", ["status"],
                                 registry=r)
        self.outbox_oldest_pending = Gauge("syncd_outbox_oldest_pending_seconds",
                                           "Age of the oldest pending outbox row", registry=r)
        self.outbox_pushed = Counter("syncd_outbox_items_total",
                                     "Outbox items finished, by op and outcome",
                                     ["op", "outcome"], registry=r)
        self.job_duration = Histogram("syncd_job_duration_seconds", "Job run durations", ["syncd_job"],
                                      buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
                                      registry=r)
        self.job_last_success = Gauge("syncd_job_last_success_timestamp_seconds",
                                      "Unix time of each job's last successful run", ["syncd_job"],
                                      registry=r)
        self.job_failures = Counter("syncd_job_failures_total", "Job runs that failed",
                                    ["syncd_job"], registry=r)
        self.job_interval = Gauge("syncd_job_interval_seconds",
                                  "Configured interval of each scheduled job (daemon)",
                                  ["syncd_job"], registry=r)
        self.reconcile_overdue = Gauge(
            "syncd_reconcile_overdue_seconds",
            "How long the most overdue reconciliation window is past its due time (0: none)",
            registry=r)
        self.is_leader = Gauge("syncd_leader", "1 while this replica holds the leader lock",
                               registry=r)
