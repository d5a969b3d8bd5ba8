"""Who may do what on the broker: one NATS user per service, plus `uploader` and `observer` for
programs outside cropcron, each allowed the subjects and JetStream API calls it needs and nothing
more (RELIABILITY A11). `cropcron up` writes these into its nats-server config and compose gets
the same from `cropcron nats-config` (shared/nats_auth.py renders them); tests prove the
boundaries (tests/test_nats_permissions.py).

Notes on the subjects (the server checks every publish and subscribe against them):
- every user reads replies on its own inbox prefix, `_INBOX_<user>.>` (the client's inbox_prefix),
  never on `_INBOX.>`, which would let it read everyone's replies;
- a JetStream publish is an ordinary publish to the stored subject (the PubAck comes back on the
  inbox); a KV put is a publish to `$KV.<bucket>.<key>`; a KV get is `$JS.API.STREAM.MSG.GET.KV_<bucket>`
  or `$JS.API.DIRECT.GET.KV_<bucket>.>`; a KV watch is an ordered consumer
  (`$JS.API.CONSUMER.CREATE.KV_<bucket>...`, flow control replies on `$JS.FC.>`);
- pulling from a durable is `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, acking is
  `$JS.ACK.<stream>.>` (and the v2 form `$JS.ACK.<domain>.<hash>.<stream>.>`, which `$JS.ACK.*.*.<stream>.>` covers);
- only `cli` (the operator: `apply` creates the streams, consumers and buckets) may create,
  change or delete them; the services bind to what exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared import wire

SERVICE_USERS = ("timer", "runner", "history", "notifier", "watcher", "dashboard", "cli")
OUTSIDE_USERS = ("uploader", "observer")
USERS = SERVICE_USERS + OUTSIDE_USERS
# a job may run as one of these (`nats_user:`); jobs get no broker credentials otherwise
JOB_USERS = OUTSIDE_USERS

# which user each service process connects as (the watcher user also runs the dispatcher)
SERVICE_USER = {"timer": "timer", "runner": "runner", "history": "history", "notifier": "notifier",
                "watcher": "watcher", "dispatcher": "watcher", "dashboard": "dashboard"}


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False  # may answer requests (on the asker's reply subject)
    everything: bool = False  # the operator: no restriction

    def as_config(self) -> dict[str, object]:
        if self.everything:
            return {}
        # an empty allow list would mean "no restriction" to the server: nothing is a deny of all
        perms: dict[str, object] = {
            "publish": {"allow": list(self.publish)} if self.publish else {"deny": [">"]},
            "subscribe": {"allow": list(self.subscribe)} if self.subscribe else {"deny": [">"]}}
        if self.allow_responses:
            perms["allow_responses"] = True
        return perms


@dataclass
class _Rights:
    pub: list[str] = field(default_factory=list)
    sub: list[str] = field(default_factory=list)

    def read_kv(self, *buckets: str) -> None:
        for b in buckets:
            self.pub += [f"$JS.API.STREAM.INFO.KV_{b}", f"$JS.API.STREAM.MSG.GET.KV_{b}", f"$JS.API.DIRECT.GET.KV_{b}",
                         f"$JS.API.DIRECT.GET.KV_{b}.>"]

    def watch_kv(self, *buckets: str) -> None:
        self.read_kv(*buckets)
        for b in buckets:
            self.pub += [f"$JS.API.CONSUMER.CREATE.KV_{b}", f"$JS.API.CONSUMER.CREATE.KV_{b}.>",
                         f"$JS.API.CONSUMER.DELETE.KV_{b}.>", f"$JS.API.CONSUMER.INFO.KV_{b}.>"]

    def write_kv(self, bucket: str, keys: str = ">") -> None:
        self.read_kv(bucket)
        self.pub.append(f"$KV.{bucket}.{keys}")

    def pull(self, stream: str, consumer: str) -> None:
        self.pub += [f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
                     f"$JS.API.STREAM.INFO.{stream}", f"$JS.ACK.{stream}.>", f"$JS.ACK.*.*.{stream}.>"]


def _service(user: str) -> _Rights:
    """What every service needs: the applied config (watched), its heartbeat, its inbox."""
    # its own inbox both ways: Bus.barrier() sends itself a message to know its subscriptions are live
    r = _Rights(pub=[f"_INBOX_{user}.>"], sub=[f"_INBOX_{user}.>"])
    # read-only metadata of every stream and consumer: a service checks the topology is there
    # (await_topology) and reads consumer counts for its gauges
    r.pub += ["$JS.API.INFO", "$JS.FC.>", "$JS.API.STREAM.INFO.>", "$JS.API.CONSUMER.INFO.>"]
    r.watch_kv(wire.KV_JOBS, wire.KV_JOB_STATE, wire.KV_WATCHES)
    r.write_kv(wire.KV_SERVICES, f"{user}.>" if user != "watcher" else "*.>")  # watcher + dispatcher beats
    return r


def _matrix() -> dict[str, Permissions]:
    out: dict[str, Permissions] = {}

    timer = _service("timer")
    timer.pub += [wire.TRIGGER_SUBJECTS, f"{wire.PREFIX}.run.*.missed"]
    timer.write_kv(wire.KV_TIMER)
    out["timer"] = Permissions(tuple(timer.pub), tuple(timer.sub))

    runner = _service("runner")
    runner.pub += [wire.RUN_EVENT_SUBJECTS, wire.REJECTED_SUBJECTS]
    for band in wire.BANDS:
        runner.pull(wire.STREAM_TRIGGERS, wire.runner_consumer(band))
    runner.write_kv(wire.KV_LEASES)
    runner.read_kv(wire.KV_BATCHES)
    # the `digest` chore: asks history for the period, puts the digest in the notifier's outbox
    runner.pub += [wire.HISTORY_REPORT_DIGEST, wire.NOTIFY_SUBJECTS]
    out["runner"] = Permissions(tuple(runner.pub), tuple(runner.sub))

    history = _service("history")
    history.sub += [f"{wire.PREFIX}.history.>"]
    history.pull(wire.STREAM_RUNS, wire.HISTORY_CONSUMER)
    history.pull(wire.STREAM_ALERTS, wire.HISTORY_ALERTS_CONSUMER)
    history.pull(wire.STREAM_FILES, wire.HISTORY_FILES_CONSUMER)
    out["history"] = Permissions(tuple(history.pub), tuple(history.sub), allow_responses=True)

    notifier = _service("notifier")
    notifier.pub += [wire.ALERT_SUBJECTS, wire.NOTIFY_SUBJECTS, wire.HISTORY_LAST, wire.HISTORY_REPORT_UPLOADS]
    notifier.pull(wire.STREAM_RUNS, wire.NOTIFIER_RUNS_CONSUMER)
    notifier.pull(wire.STREAM_ALERTS, wire.NOTIFIER_ALERTS_CONSUMER)
    notifier.pull(wire.STREAM_NOTIFY, wire.DELIVER_CONSUMER)
    notifier.write_kv(wire.KV_NOTIFY)
    notifier.watch_kv(wire.KV_NOTIFY)  # follows the applied notifications config
    notifier.read_kv(wire.KV_SERVICES)
    notifier.pub += [f"$JS.API.STREAM.INFO.KV_{wire.KV_SERVICES}"]
    out["notifier"] = Permissions(tuple(notifier.pub), tuple(notifier.sub))

    watcher = _service("watcher")  # detection and dispatch
    watcher.pub += [wire.FILE_SUBJECTS, wire.TRIGGER_SUBJECTS, wire.REJECTED_SUBJECTS, wire.FLIGHT_SUBJECTS,
                    f"$JS.API.STREAM.PURGE.{wire.KV_BATCHES_STREAM}"]
    watcher.pull(wire.STREAM_FILES, wire.DISPATCH_CONSUMER)
    watcher.write_kv(wire.KV_BATCHES)
    out["watcher"] = Permissions(tuple(watcher.pub), tuple(watcher.sub))

    dashboard = _service("dashboard")
    dashboard.sub += [wire.RUN_EVENT_SUBJECTS, wire.ALERT_SUBJECTS]
    dashboard.pub += [wire.TRIGGER_SUBJECTS, f"{wire.PREFIX}.history.>"]
    dashboard.write_kv(wire.KV_JOB_STATE)
    dashboard.read_kv(wire.KV_SERVICES)
    dashboard.read_kv(wire.KV_BATCHES)  # open flights, shown on the Flights page (read only)
    out["dashboard"] = Permissions(tuple(dashboard.pub), tuple(dashboard.sub))

    out["cli"] = Permissions((), (), everything=True)
    # outside programs: a drone upload tool announces files (the PubAck comes back on its inbox) ...
    # (`cropcron publish-file` reads the watch roots to refuse paths outside them: read-only)
    uploader = _Rights(pub=[wire.FILE_SUBJECTS], sub=["_INBOX_uploader.>"])
    uploader.read_kv(wire.KV_WATCHES)
    out["uploader"] = Permissions(tuple(uploader.pub), tuple(uploader.sub))
    # ... and a module that follows what happens reads run events and alerts, and publishes nothing
    out["observer"] = Permissions((), (wire.RUN_EVENT_SUBJECTS, wire.ALERT_SUBJECTS, wire.FLIGHT_SUBJECTS))
    return out


MATRIX: dict[str, Permissions] = _matrix()


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"
