"""Gossip convergence on loopback: how long until a new peer is reachable from every peer
of an N-peer mesh, and until a stopped peer is gone from every peer's view.

    .venv/bin/python bench/gossip_convergence.py                 # 20 peers, 5 joins
    .venv/bin/python bench/gossip_convergence.py --peers 5 --runs 3 --json

N `GossipPeer`s (gossip/peers.py) in this process on 127.0.0.1, each with its own port
(chosen by the kernel), joined one after another from the first as the only seed, with
the default timings (gossip every 1 s, a change pushed within 20 ms, dead after 5 s).
Once all are in one full mesh (untimed), `--runs` times: a new peer starts with the
first as its seed, and the time until every peer has a first hop to it is taken; then
it stops, and the time until no peer lists it is taken. Baseline of the same run: the
first document written on one peer and seen by every peer (the push path alone).
Loopback only: what the lab adds (namespaces, the underlay, the fabric converge) is
for the lab bench of issue 14's integration. Nothing but loopback sockets is created,
and every peer is stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchlib import BenchError, log, machine, percentile, run_bench

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

POLL = 0.005


def _wait(check, what: str, deadline: float) -> float:
    """Seconds until `check()` holds (BenchError past `deadline`)."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > deadline:
            raise BenchError(f"not reached within {deadline} s: {what}")
        time.sleep(POLL)
    return time.perf_counter() - start


def bench(args: argparse.Namespace) -> dict:
    from podnet.gossip.peers import GossipPeer

    peers: list[GossipPeer] = []

    def start(name: str) -> GossipPeer:
        seeds = [peers[0].address] if peers else []
        peer = GossipPeer(name, listen=("127.0.0.1", 0), seeds=seeds)
        peer.start()
        return peer

    outcome: dict = {"machine": machine(), "peers": args.peers, "runs": args.runs}
    try:
        for i in range(args.peers):
            peers.append(start(f"p{i:02d}"))
        names = {p.name for p in peers}
        _wait(lambda: all(set(p.next_hops()) == names - {p.name} for p in peers), "one mesh", 120)
        log(f"{args.peers} peers in one mesh")
        docs, joins, leaves = [], [], []
        for run in range(args.runs):
            key = f"bench/{run}"
            peers[run % len(peers)].put(key, {"run": run})
            docs.append(_wait(lambda k=key: all(p.get(k) is not None for p in peers), "a document everywhere", 30))
            new = start(f"n{run:02d}")
            try:
                joins.append(_wait(lambda n=new: all(n.name in p.next_hops() for p in peers), "the new peer", 60))
            finally:
                new.stop()
            leaves.append(_wait(lambda n=new: all(n.name not in p.next_hops() for p in peers), "the peer gone", 60))
            log(f"run {run + 1}: document {docs[-1] * 1000:.0f} ms, join {joins[-1]:.2f} s, leave {leaves[-1]:.2f} s")
    finally:
        for peer in peers:
            peer.stop()

    def spread(values: list[float]) -> dict:
        return {"median_s": round(percentile(values, 0.5), 3), "max_s": round(max(values), 3)}

    outcome.update(document=spread(docs), join=spread(joins), leave=spread(leaves),
                   join_vs_document=round(percentile(joins, 0.5) / percentile(docs, 0.5), 1))
    outcome["cleanup"] = {"ok": True, "problems": []}
    return outcome


def render(outcome: dict) -> None:
    print(f"gossip on loopback, {outcome['peers']} peers, {outcome['runs']} runs")
    for what in ("document", "join", "leave"):
        r = outcome[what]
        print(f"  {what:8}  median {r['median_s']:.3f} s  max {r['max_s']:.3f} s")
    print(f"  a new peer reachable from all: {outcome['join_vs_document']}x a document's spread")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20, help="peers in the mesh (default 20)")
    parser.add_argument("--runs", type=int, default=5, help="joins and leaves timed (default 5)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.peers < 2 or args.runs < 1:
        parser.error("--peers must be >= 2 and --runs >= 1")
    return run_bench("gossip_convergence", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
