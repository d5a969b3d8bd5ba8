"""`cropcron replicas [N]`: how many copies the broker keeps of each stream and bucket, and where
(leader, replicas, whether each is current); with N, change them all to N (docs/scale-out.md:
from one node to three, or back). The operator's command (user `cli`), like `apply`."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import NotFoundError

from cropcron.tables import print_json, print_table
from shared.bus import Bus
from shared.topology import scale_topology, topology_names


async def _rows(bus: Bus) -> list[dict[str, Any]]:
    streams, _ = topology_names()
    rows: list[dict[str, Any]] = []
    for name in streams:
        try:
            info = await bus.js.stream_info(name)
        except NotFoundError:
            rows.append({"stream": name, "replicas": None, "leader": None, "peers": "missing (`cropcron apply`)"})
            continue
        cluster = info.cluster
        peers = ", ".join(f"{p.name}{'' if p.current and not p.offline else ' (behind)' if not p.offline else ' (offline)'}"
                          for p in (cluster.replicas or [])) if cluster else ""
        rows.append({"stream": name, "replicas": info.config.num_replicas or 1,
                     "leader": cluster.leader if cluster else None, "peers": peers})
    return rows


def add_parser(sub: Any, common: argparse.ArgumentParser,
               with_bus: Callable[[argparse.Namespace, Callable[[Bus], Awaitable[int]]], int]) -> None:
    p = sub.add_parser("replicas", parents=[common], help="the copies the broker keeps of each stream and bucket; "
                       "with N, make them N (1 on one nats-server, 3 on a three-node cluster)")
    p.add_argument("count", nargs="?", type=int, choices=range(1, 6), metavar="N", help="1 to 5")

    def run(args: argparse.Namespace) -> int:
        async def go(bus: Bus) -> int:
            if args.count is not None:
                changed = await scale_topology(bus.js, args.count)
                if not args.json:
                    print(f"{len(changed)} streams and buckets changed to {args.count} replicas"
                          + (" (the others had it already)" if changed and len(changed) < len(topology_names()[0]) else "")
                          + ("; the new copies fill in the background: `cropcron replicas` shows when they are "
                             "current" if changed and args.count > 1 else ""))
            rows = await _rows(bus)
            if args.json:
                print_json(rows)
            else:
                print_table(["stream", "replicas", "leader", "peers"],
                            [[r["stream"], r["replicas"], r["leader"], r["peers"]] for r in rows])
            return 0

        return with_bus(args, go)

    p.set_defaults(fn=run)
