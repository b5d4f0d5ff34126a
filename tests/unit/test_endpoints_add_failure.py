"""An ADD that fails after its pending endpoint record was written leaves nothing: the
record goes with the failure, not only with a later DEL or resync."""

from __future__ import annotations

import io
import json

from podnet import keys
from podnet.endpoints.service import CniService
from podnet.store import open_store


def test_a_failed_delegated_ipam_leaves_no_pending_record(tmp_path):
    store_path = tmp_path / "podnet.db"
    config = {"cniVersion": "1.0.0", "name": "net", "type": "podnet", "bridge": "pntest0",
              "store": str(store_path), "ipam": {"type": "no-such-ipam-plugin"}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(tmp_path)}
    service, out = CniService(default_store=str(tmp_path / "agent.db")), io.StringIO()
    try:
        code = service.run_invocation(env, json.dumps(config).encode(), out, None, None)
    finally:
        service.close()
    assert code == 1 and "no-such-ipam-plugin" in json.loads(out.getvalue())["msg"]
    with open_store(str(store_path)) as store:
        assert store.list(keys.endpoints()) == []
