"""Fixtures shared by every test that touches namespaces."""

from __future__ import annotations

import secrets
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cniharness import Agent, Cni, bridge_config, needs_root  # noqa: E402
from podnet.install.cni import install_cni  # noqa: E402
from podnet.lab.sandbox import Sandbox  # noqa: E402

# `make test` runs the suite on three pytest-xdist workers, one module at a time per worker
# (--dist loadfile: a module's labs are built once). The modules here run alone
# afterwards (`-m alone`): their assertions hold a timing (TTL windows, latency
# thresholds, a capture's window) that another worker's load could break, or look at
# every pnc-* namespace of the machine, which other modules' containers create.
ALONE = (
    "unit/test_store_etcd.py", "ns/test_lab_reliability.py", "ns/test_dns_agent.py", "unit/test_dns_server.py",
    "unit/test_dns_service.py", "unit/test_gossip_peers.py", "ns/test_mesh_lab.py", "ns/test_mesh_log_sink.py",
    "ns/test_sleeve_ns.py", "ns/test_network_vlan_ns.py", "ns/test_demo.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0].removeprefix("tests/")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m alone` (make test's second part) imports only the ALONE modules: collecting
    the whole suite to deselect all but those cost that part ~6 of its seconds."""
    here = Path(__file__).parent
    if (config.option.markexpr == "alone" and collection_path.name.startswith("test_")
            and collection_path.suffix == ".py" and collection_path.is_relative_to(here)):
        return str(collection_path.relative_to(here)) not in ALONE
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _module(item.nodeid) in ALONE:
            item.add_marker(pytest.mark.alone)


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory) -> str:
    """The podnet executables, installed once per session as `install-cni` does."""
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    install_cni(str(bin_dir))
    return str(bin_dir)


@pytest.fixture
def sandbox():
    needs_root()
    with Sandbox("pn-t-") as box:
        yield box


@pytest.fixture
def host_ns(sandbox) -> str:
    """The namespace playing the container host: where the runtime calls the plugin."""
    return sandbox.netns("host")


@pytest.fixture
def data_dir(tmp_path) -> str:
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


@pytest.fixture
def socket_path() -> str:
    # Short and unique: UNIX socket paths are limited to 108 bytes.
    path = f"/run/podnet/t-{secrets.token_hex(4)}.sock"
    yield path
    Path(path).unlink(missing_ok=True)
    shutil.rmtree(path + ".stores", ignore_errors=True)  # where the plugin's fallback noted its stores


@pytest.fixture
def agent(sandbox, host_ns, socket_path, tmp_path) -> Agent:
    return Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()


@pytest.fixture(params=["agent", "in-process"])
def cni(request, sandbox, host_ns, cni_bin, data_dir, socket_path, tmp_path) -> Cni:
    """A bridge network, served by a running agent or by the plugin's fallback."""
    config = bridge_config("t-net", data_dir, agentSocket=socket_path)
    if request.param == "agent":
        Agent(sandbox, host_ns, socket_path, str(tmp_path / "agent.db")).start()
    return Cni(cni_bin, host_ns, config, sandbox)
