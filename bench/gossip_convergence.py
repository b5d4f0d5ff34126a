"""Gossip convergence on loopback: how long until a new peer is reachable from every peer
of an N-peer mesh, until a stopped peer is gone from every peer's view, and until the
survivors agree to reclaim a dead peer's share of the ring.

    .venv/bin/python bench/gossip_convergence.py                 # 20 peers, 5 joins, 3 reclaims
    .venv/bin/python bench/gossip_convergence.py --peers 5 --runs 3 --repeat 3 --grace 2 --json

N `GossipPeer`s (gossip/peers.py) in this process on 127.0.0.1, each with its own port
(chosen by the kernel), joined one after another from the first as the only seed, with
the default timings (gossip every 1 s, a change pushed within 20 ms, dead after 5 s).
Once all are in one full mesh (untimed), `--runs` times: a new peer starts with the
first as its seed, and the time until every peer has a first hop to it is taken; then
it stops, and the time until no peer lists it is taken. Baseline of the same run: the
first document written on one peer and seen by every peer (the push path alone).

Reclaim, `--repeat` rounds, each on a fresh mesh of N peers (a reclaimed peer is dead
for good, so every round starts from one ring claimed initially by all N): each peer
keeps a `RingSync` (gossip/ring_sync.py) as its ring callbacks, and one thread ticks
every peer once per gossip interval, the peers' phases spread evenly over it (as N
agents' own loops would), pushing when the copy changed. Once every peer holds one
topology and two rounds ticked (untimed: a mesh still settling was seen to take 1-3 s
instead of 0.4 s to drop a peer), one peer (never the lowest, the taker) stops at t0; taken are the time until no survivor has a route to it
(detection: what `tick` is given), and until every survivor's copy records its space as
reclaimed; the part beyond `--grace` is what the votes, the tick rounds and the gossip
add. Every copy must then name the same taker (the lowest live peer) and the same token
owners, the dead peer's tokens the taker's; otherwise the bench fails.

Loopback only: what the lab adds (namespaces, the underlay, the fabric converge) is
for the lab bench of issue 14's integration. Nothing but loopback sockets is created,
and every peer is stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from benchlib import BenchError, log, machine, percentile, run_bench

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

POLL = 0.005
RING_RANGE = "10.32.0.0/16"


def _wait(check, what: str, deadline: float, since: float | None = None) -> float:
    """Seconds from `since` (default: now) until `check()` holds (BenchError past `deadline`)."""
    start = time.perf_counter() if since is None else since
    while not check():
        if time.perf_counter() - start > deadline:
            raise BenchError(f"not reached within {deadline} s: {what}")
        time.sleep(POLL)
    return time.perf_counter() - start


def _start_mesh(peers: list, names: list[str], **callbacks) -> None:
    """Start a GossipPeer per name into `peers` (the first is every later one's seed) and
    wait for one full mesh. `callbacks[name]` are that peer's keyword arguments."""
    from podnet.gossip.peers import GossipPeer

    for name in names:
        seeds = [peers[0].address] if peers else []
        peer = GossipPeer(name, listen=("127.0.0.1", 0), seeds=seeds, **callbacks.get(name, {}))
        peer.start()
        peers.append(peer)
    everyone = {p.name for p in peers}
    _wait(lambda: all(set(p.next_hops()) == everyone - {p.name} for p in peers), "one mesh", 120)


def _spread(values: list[float]) -> dict:
    return {"median_s": round(percentile(values, 0.5), 3), "max_s": round(max(values), 3)}


def _tick_rounds(live: dict, interval: float, stop: threading.Event) -> None:
    """`RingSync.tick` of every live (peer, sync) once per `interval`, phases spread
    evenly; a push when the copy changed (what the agent's gossip loop will do)."""
    now = time.monotonic()
    due = {name: now + interval * i / len(live) for i, name in enumerate(sorted(live))}
    while due and not stop.is_set():
        name = min(due, key=due.__getitem__)
        if stop.wait(max(0.0, due[name] - time.monotonic())):
            return
        due[name] += interval
        entry = live.get(name)
        if entry is None:  # stopped by the bench
            del due[name]
            continue
        peer, sync = entry
        if sync.tick(set(peer.next_hops())):
            peer.push()


def _agreement(syncs: dict, dead: str, before) -> str:
    """The taker every copy names; BenchError when two copies differ or the dead peer's
    space is not wholly the lowest live peer's."""
    from podnet.gossip.ring_parts import RingError

    rings = {name: sync.ring() for name, sync in syncs.items()}
    takers = {name: ring.deaths[dead].reclaimed_by for name, ring in rings.items()}
    owners = {name: [(t.start, t.end, t.owner) for t in ring.tokens] for name, ring in rings.items()}
    if len(set(takers.values())) != 1:
        raise BenchError(f"copies name different takers for {dead}: {takers}")
    first = min(owners)
    differ = sorted(name for name in owners if owners[name] != owners[first])
    if differ:
        raise BenchError(f"token owners differ from {first}'s copy in: {', '.join(differ)}")
    taker = takers[first]
    ring = rings[first]
    if taker != min(syncs):
        raise BenchError(f"{dead}'s space went to {taker}, not to the lowest live peer {min(syncs)}")
    if ring.owned_by(dead) or any(ring.owner_of(lo) != taker for lo, _hi in before.owned_by(dead)):
        raise BenchError(f"{dead}'s tokens are not all {taker}'s: {ring.owned_by(dead)}")
    try:
        ring.check()
    except RingError as exc:
        raise BenchError(f"the agreed ring is unsound: {exc}") from None
    return taker


def reclaim_round(count: int, grace: float, victim_index: int) -> dict:
    """One round on a fresh mesh: seconds from the stop to detection and to agreement."""
    from podnet.gossip.peers import DEFAULT_TIMING
    from podnet.gossip.ring import Ring
    from podnet.gossip.ring_sync import RingSync

    names = [f"r{i:02d}" for i in range(count)]
    ring = Ring.empty(RING_RANGE).claim_initial(names)
    syncs = {name: RingSync(name, ring, grace) for name in names}
    peers: list = []
    stop = threading.Event()
    ticker: threading.Thread | None = None
    try:
        _start_mesh(peers, names, **{n: {"get_ring": s.get_ring, "merge_ring": s.merge_ring} for n, s in syncs.items()})
        live = {p.name: (p, syncs[p.name]) for p in peers}
        ticker = threading.Thread(target=_tick_rounds, args=(live, DEFAULT_TIMING.gossip_interval, stop),
                                  name="ring-rounds", daemon=True)
        ticker.start()
        versions = lambda p: {n: e.version for n, e in p.topology().items()}  # noqa: E731
        _wait(lambda: all(versions(p) == versions(peers[0]) for p in peers), "one topology everywhere", 60)
        time.sleep(2 * DEFAULT_TIMING.gossip_interval)  # a settled mesh; every peer ticked with all in contact
        victim = peers[victim_index]
        if any(s.ring().owned_by(victim.name) != ring.owned_by(victim.name) for s in syncs.values()):
            raise BenchError(f"{victim.name}'s space moved before it stopped")
        del live[victim.name]
        del syncs[victim.name]
        t0 = time.perf_counter()
        victim.stop()
        survivors = [p for p in peers if p is not victim]
        detect = _wait(lambda: all(victim.name not in p.next_hops() for p in survivors),
                       f"{victim.name} gone from every route", 60, since=t0)
        agree = _wait(lambda: all((d := s.ring().deaths.get(victim.name)) and d.reclaimed_by for s in syncs.values()),
                      f"{victim.name}'s space reclaimed in every copy", grace + 60, since=t0)
        taker = _agreement(syncs, victim.name, ring)
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
        for peer in peers:
            peer.stop()
    return {"dead": victim.name, "taker": taker, "detect_s": round(detect, 3), "agree_s": round(agree, 3),
            "beyond_grace_s": round(agree - grace, 3)}


def bench(args: argparse.Namespace) -> dict:
    from podnet.gossip.peers import GossipPeer

    peers: list[GossipPeer] = []
    outcome: dict = {"machine": machine(), "peers": args.peers, "runs": args.runs}
    try:
        _start_mesh(peers, [f"p{i:02d}" for i in range(args.peers)])
        log(f"{args.peers} peers in one mesh")
        docs, joins, leaves = [], [], []
        for run in range(args.runs):
            key = f"bench/{run}"
            peers[run % len(peers)].put(key, {"run": run})
            docs.append(_wait(lambda k=key: all(p.get(k) is not None for p in peers), "a document everywhere", 30))
            new = GossipPeer(f"n{run:02d}", listen=("127.0.0.1", 0), seeds=[peers[0].address])
            new.start()
            try:
                joins.append(_wait(lambda n=new: all(n.name in p.next_hops() for p in peers), "the new peer", 60))
            finally:
                new.stop()
            leaves.append(_wait(lambda n=new: all(n.name not in p.next_hops() for p in peers), "the peer gone", 60))
            log(f"run {run + 1}: document {docs[-1] * 1000:.0f} ms, join {joins[-1]:.2f} s, leave {leaves[-1]:.2f} s")
    finally:
        for peer in peers:
            peer.stop()

    outcome.update(document=_spread(docs), join=_spread(joins), leave=_spread(leaves),
                   join_vs_document=round(percentile(joins, 0.5) / percentile(docs, 0.5), 1))
    rounds = []
    for i in range(args.repeat):
        rounds.append(reclaim_round(args.peers, args.grace, 1 + i * (args.peers // 2) % (args.peers - 1)))
        r = rounds[-1]
        log(f"reclaim {i + 1}: {r['dead']} gone from all {r['detect_s']:.2f} s, reclaimed by {r['taker']} "
            f"in every copy {r['agree_s']:.2f} s ({r['beyond_grace_s']:+.2f} s beyond the grace)")
    outcome["reclaim"] = {"grace_s": args.grace, "repeat": args.repeat, "rounds": rounds,
                          **{k: _spread([r[f"{k}_s"] for r in rounds]) for k in ("detect", "agree", "beyond_grace")}}
    outcome["cleanup"] = {"ok": True, "problems": []}
    return outcome


def render(outcome: dict) -> None:
    print(f"gossip on loopback, {outcome['peers']} peers, {outcome['runs']} runs")
    for what in ("document", "join", "leave"):
        r = outcome[what]
        print(f"  {what:8}  median {r['median_s']:.3f} s  max {r['max_s']:.3f} s")
    print(f"  a new peer reachable from all: {outcome['join_vs_document']}x a document's spread")
    reclaim = outcome["reclaim"]
    print(f"dead peer's reclaim, {reclaim['repeat']} rounds, grace {reclaim['grace_s']:g} s (seconds after the stop)")
    for what, label in (("detect", "gone from every route"), ("agree", "reclaimed in every copy"),
                        ("beyond_grace", "of which beyond the grace")):
        r = reclaim[what]
        print(f"  {label:26}  median {r['median_s']:.3f} s  max {r['max_s']:.3f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20, help="peers in the mesh (default 20)")
    parser.add_argument("--runs", type=int, default=5, help="joins and leaves timed (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="dead-peer reclaims timed, one mesh each (default 3)")
    parser.add_argument("--grace", type=float, default=2.0, help="reclaim grace period in seconds (default 2)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results only")
    args = parser.parse_args(argv)
    if args.peers < 3 or args.runs < 1 or args.repeat < 1:
        parser.error("--peers must be >= 3 (a reclaim needs a majority left), --runs >= 1 and --repeat >= 1")
    if not args.grace > 0:
        parser.error("--grace must be > 0 seconds")
    return run_bench("gossip_convergence", bench, args, render)


if __name__ == "__main__":
    sys.exit(main())
