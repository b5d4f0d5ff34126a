"""What the policy lab tests share: the upstream netpol world as a lab (examples/
topologies/netpol.yaml: namespaces x, y, z with pods a, b, c over 3 nodes, every pod
serving 80 and 81 over TCP and UDP), applying objects and syncing the agents, the real
`podnet probe` over the whole matrix, and the reference semantics to compare it with.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from podnet.lab.sandbox import stop_process
from podnet.lab.state import state_file
from podnet.objects import store as object_store
from podnet.objects.registry import parse_documents
from podnet.policy.evaluate import decide
from podnet.policy.world import load_world
from podnet.rpc.client import call
from podnet.store import open_store

NETPOL = Path(__file__).parents[1] / "examples" / "topologies" / "netpol.yaml"
PODS = [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"]
CELLS = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]
NAMESPACES = "\n---\n".join(
    f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}, labels: {{ns: {n}}}}}" for n in "xyz")


class Lab:
    def __init__(self, name: str, data: dict) -> None:
        self.name, self.data = name, data
        self.store = open_store(data["store_url"])
        self.sockets = [node["socket"] for node in data["nodes"].values()]
        self.started: list[subprocess.Popen] = []  # agents a test restarted: stopped by PID

    def close(self) -> None:
        self.store.close()
        for proc in self.started:
            stop_process(proc, 10)

    def ip(self, pod: str, family: int = 4) -> str:
        """The pod's address of IP `family` (a dual-stack lab's pods have both)."""
        return next(ip.split("/")[0] for ip in self.data["pods"][pod]["ips"] if (":" in ip) == (family == 6))

    def sync(self) -> None:
        """Every agent converges now; then the nodes forget earlier flows, as upstream
        e2e cases start from fresh pods (an established flow outlives a policy change,
        as in Calico and Cilium; a reused UDP source port would ride on it)."""
        for sock in self.sockets:
            result = call(sock, "policy.sync")
            assert result["error"] is None, result  # type: ignore[index]
        for node in self.data["nodes"].values():
            subprocess.run(["nsenter", f"--net=/run/netns/{node['netns']}", "conntrack", "-F"],
                           capture_output=True, check=False)

    def apply(self, text: str) -> list:
        objects = parse_documents(d for d in yaml.safe_load_all(text) if d)
        object_store.apply(self.store, objects)
        self.sync()
        return objects

    def apply_without_sync(self, text: str) -> list:
        objects = parse_documents(d for d in yaml.safe_load_all(text) if d)
        object_store.apply(self.store, objects)
        return objects

    def delete(self, objects: list) -> None:
        object_store.delete(self.store, objects)
        self.sync()

    def probe(self, family: int = 4) -> dict[tuple[int, str], dict[str, dict[str, bool]]]:
        out = subprocess.run([sys.executable, "-m", "podnet.cli", "probe", "--name", self.name, "-o", "json",
                              "--timeout", "0.6", "--family", str(family)],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        raw = json.loads(out.stdout)
        return {(int(k.split("/")[0]), k.split("/")[1].upper()): v for k, v in raw.items()}

    def expected(self, family: int = 4) -> dict[tuple[int, str], dict[str, dict[str, bool]]]:
        """The reference's verdict of every cell, for the pods' addresses of `family`."""
        world, _rev = load_world(self.store)
        at = {pod: self.ip(pod, family) for pod in PODS}
        return {(port, proto): {s: {d: decide(world, at[s], at[d], port, proto).allowed for d in PODS}
                                for s in PODS} for port, proto in CELLS}


def mismatches(got: dict, want: dict) -> list[str]:
    return [f"{port}/{proto} {s}->{d}: probe {got[(port, proto)][s][d]}, expected {want[(port, proto)][s][d]}"
            for port, proto in CELLS for s in PODS for d in PODS
            if got[(port, proto)][s][d] != want[(port, proto)][s][d]]


@contextlib.contextmanager
def netpol_lab(fabric: str, prefix: str, ipv6: bool = False, **options: object) -> Iterator[Lab]:
    """The netpol lab (`<prefix><hex>`), torn down by recorded names whatever happens;
    `ipv6`: dual stack, every pod with an address of each family; `options`: more of
    LabOptions (e.g. fastpath)."""
    from podnet.lab import topology as topo
    from podnet.lab.builder import LabBuilder, LabOptions
    from podnet.lab.teardown import teardown

    name = f"{prefix}{secrets.token_hex(2)[:3]}"
    dual = {"cluster_cidr6": topo.CLUSTER_CIDR6, "service_cidr": "10.96.0.0/16,fd00:10:96::/112"} if ipv6 else {}
    builder = LabBuilder(topo.load(NETPOL), LabOptions(name=name, fabric=fabric, timeout=60, **dual, **options))
    lab = None
    try:
        lab = Lab(name, builder.build().data)
        lab.apply(NAMESPACES)
        yield lab
    finally:
        if lab is not None:
            lab.close()
        if state_file(name).exists():
            assert not teardown(name)


TCP_PROBE = ("import socket,sys\n"
             "try:\n"
             "    s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=0.8); s.sendall(b'hi\\n')\n"
             "    print(s.recv(100).decode().split()[0])\n"
             "except OSError:\n"
             "    print('blocked')\n")


def tcp_from(lab: Lab, pod: str, ip: str, port: int) -> str:
    """Who answered a TCP connection from `pod` (the echo server's name), or 'blocked'."""
    ns = lab.data["pods"][pod]["netns"]
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", TCP_PROBE, ip, str(port)],
                         capture_output=True, text=True, timeout=20, check=True)
    return out.stdout.strip()


def check(lab: Lab, text: str, family: int = 4) -> dict:
    """Apply, probe over `family`, compare every cell with the oracle, clean up; return
    the probe."""
    objects = lab.apply(text)
    try:
        got, want = lab.probe(family), lab.expected(family)
        assert not mismatches(got, want), "\n".join(mismatches(got, want)[:20])
        return got
    finally:
        lab.delete(objects)


def np(name: str, ns: str, spec: str) -> str:
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"


def cp(name: str, spec: str) -> str:
    return f"apiVersion: podnet.io/v1\nkind: ClusterPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"


TIER = "apiVersion: podnet.io/v1\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n---\n"

# --------------------------------------------------------------------------- cases
CASES: dict[str, str] = {
    "default-deny-ingress": np("deny", "x", "  podSelector: {}\n"),
    "default-deny-egress": np("deny", "x", "  podSelector: {}\n  policyTypes: [Egress]\n"),
    "default-deny-both": np("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
    "allow-all-ingress-rule": np("deny", "x", "  podSelector: {}\n") + "\n---\n"
    + np("all", "x", "  podSelector: {}\n  ingress: [{}]\n"),
    "ingress-empty-list-denies": np("p", "x", "  podSelector: {}\n  ingress: []\n"),
    "empty-from-list-is-all": np("p", "x", "  podSelector: {}\n  ingress: [{from: []}]\n"),
    "same-namespace": np("p", "x", "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n"),
    "from-namespace-y": np("p", "x", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"),
    "pod-and-namespace-one-peer": np("p", "x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: "
                                     "[{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n"),
    "pod-or-namespace-two-peers": np("p", "x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: "
                                     "[{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]\n"),
    "pod-b-any-namespace": np("p", "x", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, "
                              "podSelector: {matchLabels: {pod: b}}}]}]\n"),
    "expr-in": np("p", "x", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: "
                  "[{key: ns, operator: In, values: [y, z]}]}}]}]\n"),
    "expr-notin": np("p", "x", "  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}\n"
                     "  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}}]}]\n"),
    "expr-exists": np("p", "y", "  podSelector: {matchExpressions: [{key: pod, operator: Exists}]}\n"
                      "  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [z]}]}}]}]\n"),
    "expr-doesnotexist": np("p", "y", "  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}\n"),
    "port-80-only": np("p", "x", "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n"),
    "named-port-81-tcp": np("p", "x", "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp}]}]\n"),
    "named-port-wrong-protocol": np("p", "x", "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp, protocol: UDP}]}]\n"),
    "endport-range": np("p", "x", "  podSelector: {}\n  ingress: [{ports: [{port: 79, endPort: 80}]}]\n"),
    "udp-81-only": np("p", "x", "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP, port: 81}]}]\n"),
    "sctp-only-blocks-tcp-udp": np("p", "x", "  podSelector: {}\n  ingress: [{ports: [{protocol: SCTP, port: 80}]}]\n"),
    "egress-to-y-only": np("p", "x", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: "
                           "[{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"),
    "egress-named-port": np("p", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
                            "  egress: [{ports: [{port: serve-80-udp, protocol: UDP}]}]\n"),
    # a named port with an ipBlock peer is the destination pod's own: pods inside the block
    # (the pod CIDR; node blocks are /24s in address order) on their port of that name
    "egress-ipblock-named-port-tcp": np("p", "x", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
                                        "  egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16}}], ports: [{port: serve-81-tcp}]}]\n"),
    "egress-ipblock-named-port-udp": np("p", "y", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: "
                                        "{cidr: 10.244.0.0/16, except: [10.244.1.0/24]}}], ports: [{port: serve-81-udp, "
                                        "protocol: UDP}]}]\n"),
    "egress-ipblock-named-port-one-block": np("p", "z", "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n"
                                              "  egress: [{to: [{ipBlock: {cidr: 10.244.2.0/24}}], ports: [{port: serve-81-tcp}, "
                                              "{port: serve-81-udp, protocol: UDP}]}]\n"),
    "egress-ipblock-named-port-no-pods": np("p", "x", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: "
                                            "[{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: serve-81-tcp}]}]\n"),
    "ingress-ipblock-named-port": np("p", "x", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.244.1.0/24}}], "
                                     "ports: [{port: serve-80-udp, protocol: UDP}]}]\n"),
    "egress-inferred-type": np("p", "z", "  podSelector: {matchLabels: {pod: c}}\n  egress: [{to: [{podSelector: {}}]}]\n"),
    "ingress-only-ignores-egress-rules": np("p", "z", "  podSelector: {}\n  policyTypes: [Ingress]\n"
                                            "  ingress: [{}]\n  egress: [{to: [{podSelector: {matchLabels: {pod: zz}}}]}]\n"),
    "union-of-policies": np("p1", "x", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n")
    + "\n---\n" + np("p2", "x", "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n"),
    "cp-deny-over-np-allow": TIER + cp("deny-z", "  tier: security\n  selector: {namespaceSelector: {matchLabels: {ns: x}}}\n"
                                       "  types: [Ingress]\n  ingress: [{action: Deny, from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n")
    + "\n---\n" + np("all", "x", "  podSelector: {}\n  ingress: [{}]\n"),
    "cp-allow-over-np-deny": cp("allow-y", "  selector: {namespaceSelector: {matchLabels: {ns: x}}}\n  types: [Ingress]\n"
                                "  ingress: [{action: Allow, from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n")
    + "\n---\n" + np("deny", "x", "  podSelector: {}\n"),
    "cp-pass-to-np": cp("pass-y", "  selector: {namespaceSelector: {matchLabels: {ns: x}}}\n  types: [Ingress]\n"
                        "  ingress: [{action: Pass, from: [{namespaceSelector: {matchLabels: {ns: y}}}]}, {action: Allow}]\n")
    + "\n---\n" + np("deny", "x", "  podSelector: {}\n"),
    "cp-order": cp("first", "  order: 10\n  selector: {podSelector: {matchLabels: {pod: a}}}\n  types: [Ingress]\n"
                   "  ingress: [{action: Allow, from: [{podSelector: {matchLabels: {pod: b}}}]}]\n")
    + "\n---\n" + cp("second", "  order: 20\n  selector: {podSelector: {matchLabels: {pod: a}}}\n  types: [Ingress]\n"
                     "  ingress: [{action: Deny}]\n"),
    "cp-tier-order": TIER + cp("late-allow", "  selector: {namespaceSelector: {}}\n  types: [Ingress]\n  ingress: [{action: Allow}]\n")
    + "\n---\n" + cp("early-deny", "  tier: security\n  selector: {podSelector: {matchLabels: {pod: c}}}\n  types: [Ingress]\n"
                     "  ingress: [{action: Deny, protocol: UDP, ports: [81]}]\n"),
    "cp-log-continues": cp("log", "  selector: {namespaceSelector: {}}\n  types: [Ingress, Egress]\n"
                           "  ingress: [{action: Log}]\n  egress: [{action: Log, protocol: TCP}]\n")
    + "\n---\n" + np("deny", "y", "  podSelector: {matchLabels: {pod: b}}\n"),
    "cp-egress-deny-ports": cp("no-81", "  selector: {namespaceSelector: {matchLabels: {ns: z}}}\n  types: [Egress]\n"
                               "  egress: [{action: Deny, protocol: TCP, ports: ['81-81']}]\n"),
    "cp-ports-range-and-nets": cp("nets", "  selector: {namespaceSelector: {matchLabels: {ns: y}}}\n  types: [Ingress]\n"
                                  "  ingress: [{action: Deny, protocol: TCP, ports: ['80-81'], from: [{nets: [10.244.0.0/16], "
                                  "podSelector: {matchLabels: {pod: a}}}]}]\n"),
}




# The cases' IPv4 ranges and their IPv6 counterparts in a dual-stack lab (the pool, and
# node blocks' twins: cluster/dualstack.py pairs block i of each pool).
IPV6_OF = {"10.244.0.0/16": "fd00:10:244::/56", "10.244.1.0/24": "fd00:10:244:1::/64",
           "10.244.2.0/24": "fd00:10:244:2::/64", "192.0.2.0/24": "2001:db8:ffff::/48"}


def over_ipv6(text: str) -> str:
    """A case with every IPv4 range of it replaced by its IPv6 counterpart."""
    for v4, v6 in IPV6_OF.items():
        text = text.replace(v4, f"'{v6}'")
    return text


# node0 as a HostEndpoint, closed to namespace x on TCP 7777 (x/a, y/c, z/b live on node0)
NODE0_HOST = """
apiVersion: podnet.io/v1
kind: HostEndpoint
metadata: {name: node0, labels: {role: node}}
spec: {node: node0}
---
apiVersion: podnet.io/v1
kind: ClusterPolicy
metadata: {name: node0-not-from-x}
spec:
  selector: {hostEndpointSelector: {matchLabels: {role: node}}}
  types: [Ingress]
  ingress: [{action: Deny, protocol: TCP, ports: [7777], from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]
"""
