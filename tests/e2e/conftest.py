"""Fixtures for end-to-end tests that run real podman inside test-made network namespaces.

* ``podman_session`` (session): isolated podman storage with ``localhost/pn-busybox:latest``
  imported once.
* ``e2e_netns``: a fresh ``pn-e2e-<random>`` namespace with lo up, deleted afterwards.
* ``podman``: a :class:`Podman` bound to ``e2e_netns`` with the reference plugins
  (``/usr/lib/cni``) and a per-test network config dir; its containers are removed afterwards.
* ``podman_factory``: build more :class:`Podman` instances (e.g. with podnet's bin dir first
  in ``cni_plugin_dirs``, or in another namespace); all are cleaned up afterwards.

Everything skips cleanly when not root or when podman/runc/busybox-static are missing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from podman_harness import (
    REFERENCE_CNI_DIR,
    Podman,
    PodmanSession,
    create_netns,
    delete_netns,
    end_session,
    missing_prerequisites,
    start_session,
)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def podman_prereqs() -> None:
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def podman_session(podman_prereqs, tmp_path_factory) -> Iterator[PodmanSession]:
    session = start_session(tmp_path_factory.mktemp("podman"))
    try:
        yield session
    finally:
        problems = end_session(session)
        if problems:
            warnings.warn("podman session cleanup: " + "; ".join(problems), stacklevel=1)


@pytest.fixture
def e2e_netns(podman_prereqs) -> Iterator[str]:
    name = create_netns()
    try:
        yield name
    finally:
        delete_netns(name)


@pytest.fixture
def podman_factory(e2e_netns: str, podman_session: PodmanSession, tmp_path: Path):
    """``make(netns=e2e_netns, cni_plugin_dirs=("/usr/lib/cni",), network_config_dir=None)``.

    Depends on ``e2e_netns`` so that its containers are removed before that namespace is
    deleted. A test that passes another namespace must keep it alive until this fixture's
    teardown (request that namespace's fixture before ``podman_factory``).
    """
    made: list[Podman] = []

    def make(
        netns: str | None = None,
        cni_plugin_dirs: Sequence[str] = (REFERENCE_CNI_DIR,),
        network_config_dir: Path | str | None = None,
    ) -> Podman:
        sub = tmp_path / f"podman{len(made)}"
        pm = podman_session.podman(
            netns or e2e_netns,
            network_config_dir or sub / "net.d",
            cni_plugin_dirs=cni_plugin_dirs,
            containers_conf=sub / "containers.conf",
        )
        made.append(pm)
        return pm

    yield make
    problems = []
    for pm in reversed(made):
        problems += pm.cleanup()
    if problems:
        warnings.warn("podman cleanup: " + "; ".join(problems), stacklevel=1)


@pytest.fixture
def podman(podman_factory) -> Podman:
    """Podman in ``e2e_netns`` with the reference CNI plugins only."""
    return podman_factory()
