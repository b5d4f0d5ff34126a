"""Names are checked whole: a trailing newline, a NUL or a non-ASCII byte count never
slips past a validator (issue 10, item 8). Each case here was accepted before."""

from __future__ import annotations

import pytest

from podnet.cni import skel
from podnet.containers import spec
from podnet.errors import PodnetError
from podnet.lab import topology
from podnet.model.network import check_name
from podnet.schema import fields
from podnet.schema.fields import Loc


@pytest.mark.parametrize("check", [
    lambda: check_name("web\n"),
    lambda: spec.check_name("api\n", "container name"),
    lambda: skel.validate_container_id("c1\n"),
    lambda: fields.dns_name("ns\n", Loc("doc"), label=True),
    lambda: fields.dns_name("a.b\n", Loc("doc"), label=False),
    lambda: fields.parse_labels({"app\n": "x"}, "doc"),
    lambda: fields.parse_labels({"app": "x\n"}, "doc"),
    lambda: topology.check_lab_name("lab\n"),
], ids=["network", "container", "cni-container-id", "dns-label", "dns-subdomain", "label-key",
        "label-value", "lab-name"])
def test_a_trailing_newline_is_refused(check):
    with pytest.raises(PodnetError):
        check()


@pytest.mark.parametrize("name", ["eth\0", "ééééééééé", "a\n"])
def test_interface_names_are_counted_in_bytes_and_refuse_nul(name):
    from podnet.naming import is_ifname
    from podnet.networks.plan import NetworkRequest, plan_network

    assert not is_ifname(name)
    with pytest.raises(PodnetError):
        skel.validate_ifname(name)
    with pytest.raises(PodnetError, match="--parent"):
        plan_network(NetworkRequest(name="m", driver="macvlan", parent=name), [], "0" * 64, 0.0)


@pytest.mark.parametrize("name", ["a/b", "../x", "-net", "net\n", "n e t"])
def test_the_cni_network_name_follows_the_spec(name):
    """CNI spec: an alphanumeric, then alphanumerics, '_', '.' or '-'. A "/" would let
    GC of network `a` reach the records of `a/b`."""
    config = b'{"cniVersion": "1.0.0", "name": %s, "type": "podnet"}' % __import__("json").dumps(name).encode()
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": ""}
    with pytest.raises(PodnetError) as err:
        skel.read_request(env, config)
    assert err.value.code == 7 and "network name" in err.value.msg
