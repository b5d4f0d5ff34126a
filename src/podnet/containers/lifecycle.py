"""Run, finish, stop and remove containers; shared by the CLI and the agent.

Every step of `run` that builds something registers its undo on an ExitStack before
the next step starts (record, directory, netns, CNI ADD, process), so a failure at
any point leaves nothing behind. Finishing (by the CLI of a foreground run, the
agent's reaper, its sweep, or `stop`) runs CNI DEL and deletes the netns under a
per-container lock, then records the exit with a compare-and-put: the first
finisher's exit code wins, a second finisher finds nothing left to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import time
from collections.abc import Callable, Container, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property

from podnet.containers import files as cfiles
from podnet.containers.files import ContainerFiles
from podnet.containers.network import (
    Cni,
    ContainerNetwork,
    attachment_summary,
    create_netns,
    delete_netns,
    load_named_network,
    load_network,
)
from podnet.containers.process import (
    ForwardSignals,
    Tee,
    container_env,
    exec_argv,
    launch_argv,
    terminate,
)
from podnet.containers.records import Records
from podnet.containers.spec import (
    IFNAME,
    ContainerError,
    RunRequest,
    default_hostname,
    exit_status,
    ifname_at,
    netns_path,
    new_id,
    new_record,
    now,
)
from podnet.model.container import Attachment, ContainerRecord
from podnet.procs import owner_alive, process_owner
from podnet.state import StatePaths
from podnet.store.base import Store

SETTLE_SECONDS = 15.0


@dataclass
class Host:
    """One podnet host as a caller sees it: state dir, store and agent socket."""

    paths: StatePaths
    store: Store
    socket: str

    @cached_property
    def records(self) -> Records:
        return Records(self.store)

    @cached_property
    def cni(self) -> Cni:
        return Cni(self.paths, self.socket)

    def files(self, container_id: str) -> ContainerFiles:
        return ContainerFiles(self.paths.container_dir(container_id))


@dataclass(frozen=True)
class Launch:
    """A container built up to its process: what to exec and how."""

    record: ContainerRecord
    argv: list[str]
    env: dict[str, str]
    files: ContainerFiles


def owns_netns(record: ContainerRecord) -> bool:
    return record.network_mode in ("bridge", "none") and bool(record.netns)


def running_target(host: Host, name: str) -> ContainerRecord:
    """The container a `container:NAME` join enters: it must be running."""
    other = host.records.get(name)
    if other is None:
        raise ContainerError(f"cannot join container {name}: no such container")
    if other.state != "running" or not owner_alive(other.process or ""):
        raise ContainerError(f"cannot join container {name}: it is not running",
                             f"start it first; its state is {other.state}")
    return other


def create(host: Host, req: RunRequest, undo: ExitStack) -> Launch:
    """Build everything but the process, registering each undo on `undo`. Checks
    that need nothing built (network, plugins' VERSION, the joined container) come
    first, so most refusals cost nothing to undo."""
    choice, network, other = req.choice, None, None
    extras = [load_named_network(host.store, host.paths, name).as_secondary() for name in req.extra_networks]
    if choice.mode == "bridge":
        network = load_network(host.store, host.paths, choice)
        network.check_request(req.ip, req.ports)
        host.cni.ensure_installed()
        for each in (network, *extras):
            host.cni.check_versions(each.conflist)
    elif choice.mode == "container":
        other = running_target(host, choice.joined or "")
    cid = new_id()
    own = choice.mode in ("bridge", "none")
    netns = netns_path(cid) if own else (other.netns if other else None)
    hostname = req.hostname or (other.hostname if other else default_hostname(req.name))
    record = new_record(req, cid, netns, hostname, process_owner())
    host.records.create(record)
    undo.callback(host.records.delete, req.name, cid)
    files = host.files(cid)
    files.root.mkdir(parents=True, exist_ok=True)
    undo.callback(shutil.rmtree, files.root, True)
    if own:
        create_netns(netns or "")
        undo.callback(delete_netns, netns or "")
    attachments: list[Attachment] = []
    if network is not None:
        ips, mac = _attach(host, req, network, files, cid, netns or "", undo)
        attachments.append(Attachment(network.name, IFNAME, tuple(ips), mac))
    for index, extra in enumerate(extras, start=1):
        undo.callback(host.cni.detach, files, ifname_at(index))
        attachments.append(attach_network(host, files, cid, netns or "", extra, ifname_at(index)))
    ips = [ip for a in attachments for ip in a.ips]
    cfiles.write_files(files, hostname, *_etc_files(host, req, hostname, ips, network, other))
    record = host.records.update(req.name, cid, lambda rec: rec.with_attachments(tuple(attachments))) or record
    argv = launch_argv(netns, hostname, files, req.cmd, own_netns=own)
    return Launch(record, argv, container_env(hostname, req.env), files)


def _attach(host: Host, req: RunRequest, network: ContainerNetwork, files: ContainerFiles, cid: str, netns: str,
            undo: ExitStack) -> tuple[list[str], str | None]:
    """CNI ADD with -p and --ip as runtimeConfig; DEL is registered first, since the
    cache that DEL reads is written before ADD starts."""
    undo.callback(host.cni.detach, files)
    runtime_config: dict = {"portMappings": [_cni_port(p) for p in req.ports]}
    if req.ip:
        runtime_config["ips"] = [req.ip]
    result = host.cni.attach(files, cid, netns, IFNAME, network, runtime_config)
    return attachment_summary(result, IFNAME)


def attach_network(host: Host, files: ContainerFiles, cid: str, netns: str, network: ContainerNetwork,
                   ifname: str) -> Attachment:
    """CNI ADD of a further network (given as_secondary): no ports, no --ip."""
    result = host.cni.attach(files, cid, netns, ifname, network, {})
    ips, mac = attachment_summary(result, ifname)
    return Attachment(network.name, ifname, tuple(ips), mac)


def _cni_port(port: dict) -> dict:
    return {k: v for k, v in port.items() if not (k == "hostIP" and not v)}


def _etc_files(host: Host, req: RunRequest, hostname: str, ips: list[str], network: ContainerNetwork | None,
               other: ContainerRecord | None) -> tuple[str, str]:
    """(hosts, resolv.conf): host mode copies the host's; a join copies the joined
    container's; bridge points DNS at the gateway (the agent's DNS server)."""
    mode = req.choice.mode
    if mode == "host":
        return cfiles.host_file(cfiles.HOST_HOSTS), cfiles.host_file(cfiles.HOST_RESOLV)
    if mode == "container" and other is not None:
        theirs = host.files(other.id)
        return cfiles.host_file(theirs.hosts), cfiles.host_file(theirs.resolv)
    nameserver = network.nameserver() if network is not None else None
    return cfiles.render_hosts(hostname, req.name, ips), cfiles.render_resolv(nameserver)


def run_foreground(host: Host, req: RunRequest, echo: bool = True) -> tuple[int, ContainerRecord]:
    """The CLI is the parent: start, tee output, wait, finish. Returns the
    container's exit code (128+N for death by signal N) and its final record."""
    with ExitStack() as undo:
        launch = create(host, req, undo)
        log = undo.enter_context(open(launch.files.log, "ab"))  # noqa: SIM115 - handed on below
        try:
            proc = subprocess.Popen(  # its own process group unless it reads our terminal
                launch.argv, env=launch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=None if req.interactive else subprocess.DEVNULL,
                process_group=None if req.interactive else 0,
            )
        except OSError as exc:
            raise ContainerError(f"cannot start {req.cmd[0]}: {exc}") from None
        undo.callback(_kill, proc)
        started = host.records.patch(req.name, launch.record.id, state="running", pid=proc.pid,
                                     process=process_owner(proc.pid), started=now())
        if started is None:
            raise ContainerError(f"container {req.name} was removed while starting")
        undo.pop_all()
    try:
        with log, ForwardSignals(proc, req.interactive):
            tee = Tee(proc, log, echo)
            proc.wait()
            tee.join()
    finally:
        _kill(proc)
        code = exit_status(proc.returncode)
        final = finish(host, req.name, started.id, code)
    return code, final or host.records.get(req.name) or started.but(state="exited", exit_code=code)


def agent_info(host: Host) -> dict:
    """The agent that will parent a detached container; it must serve our state dir."""
    from podnet.errors import PodnetError
    from podnet.rpc.client import AgentUnavailable, call

    hint = f"start the agent: podnet agent --state-dir {host.paths.root} --socket {host.socket}"
    try:
        info = call(host.socket, "container.info", timeout=10)
    except AgentUnavailable:
        raise ContainerError(
            f"run -d needs the podnet agent (the parent of detached containers); none answers on {host.socket}",
            hint) from None
    except PodnetError as err:
        raise ContainerError(f"the agent on {host.socket} cannot supervise containers: {err.msg}", hint) from None
    if not isinstance(info, dict) or info.get("state_dir") != str(host.paths.root):
        raise ContainerError(
            f"the agent on {host.socket} serves state dir {info.get('state_dir') if isinstance(info, dict) else '?'},"
            f" not {host.paths.root}", hint)
    return info


def run_detached(host: Host, req: RunRequest) -> ContainerRecord:
    """The agent is the parent (PID 1 here reaps nobody): it spawns the process with
    its output in the log, waits for it and finishes the container."""
    from podnet.rpc.client import call

    agent_info(host)
    with ExitStack() as undo:
        launch = create(host, req, undo)
        call(host.socket, "container.spawn", name=req.name, id=launch.record.id, argv=launch.argv,
             env=launch.env, log_path=str(launch.files.log), netns=launch.record.netns,
             state_dir=str(host.paths.root))
        undo.pop_all()
    return host.records.require(req.name)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def finish(host: Host, name: str, container_id: str, exit_code: int | None) -> ContainerRecord | None:
    """CNI DEL and netns removal, then the record marked exited: "exited" means the
    address and ports are free again. Teardown is idempotent and locked, so two
    finishers at once are harmless; the compare-and-put lets one of them record the
    exit. Returns the record if this caller marked it, None if another already had."""
    record = host.records.get(name)
    if record is None or record.id != container_id or record.state == "exited":
        return None

    def claim(rec: ContainerRecord) -> ContainerRecord | None:
        if rec.state == "exited":
            return None
        return rec.but(state="exited", exit_code=exit_code, finished=now())

    try:
        teardown(host, record)
    finally:  # even when DEL failed: the process is gone; `rm` retries the teardown
        claimed = host.records.update(name, container_id, claim)
    if claimed is not None and claimed.auto_remove:
        purge(host, claimed)
    return claimed


@contextlib.contextmanager
def locked(files: ContainerFiles) -> Iterator[None]:
    """Serialise teardowns of one container (a stop racing its own reaper)."""
    try:
        handle = open(files.lock, "a")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        yield  # the directory is gone: nothing of ours is left to lock
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def teardown(host: Host, record: ContainerRecord) -> None:
    """CNI DEL (from the cache) and the netns, each attempted; idempotent."""
    files = host.files(record.id)
    errors: list[ContainerError] = []
    with locked(files):
        for step in (lambda: host.cni.detach_all(files),
                     lambda: delete_netns(record.netns or "") if owns_netns(record) else None):
            try:
                step()
            except ContainerError as err:
                errors.append(err)
    if errors:
        raise errors[0]


def purge(host: Host, record: ContainerRecord) -> None:
    shutil.rmtree(host.files(record.id).root, ignore_errors=True)
    host.records.delete(record.name, record.id)


def settle(host: Host, record: ContainerRecord, timeout: float = SETTLE_SECONDS) -> ContainerRecord:
    """After the process is gone, wait for its supervisor to finish the container;
    finish it here when the supervisor is gone too (or does not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        current = host.records.get(record.name)
        if current is None or current.id != record.id:
            return record.but(state="exited")
        if current.state == "exited":
            return current
        if not owner_alive(current.supervisor or "") or time.monotonic() > deadline:
            return finish(host, record.name, record.id, None) or host.records.require(record.name)
        time.sleep(0.05)


def stop_process(host: Host, record: ContainerRecord, timeout: float) -> ContainerRecord:
    """Stop a container known only by its owner tag (not our child)."""
    terminate(record.process, timeout)
    return settle(host, record)


def stop(host: Host, name: str, timeout: float) -> ContainerRecord:
    """SIGTERM, SIGKILL after `timeout`, then CNI DEL and netns removal. A detached
    container is stopped by the agent (its parent) when one answers."""
    record = host.records.require(name)
    if record.state != "running":
        return record
    if record.detached:
        from podnet.rpc.client import AgentUnavailable, call

        with contextlib.suppress(AgentUnavailable):
            final = call(host.socket, "container.stop", timeout=timeout + 60, name=name, id=record.id, grace=timeout)
            return ContainerRecord.from_json(final, f"the agent's answer to container.stop {name}")
    return stop_process(host, record, timeout)


def busy(record: ContainerRecord) -> bool:
    """Running, or being built by a live process."""
    return record.state == "running" or (record.state == "created" and owner_alive(record.supervisor or ""))


def remove(host: Host, name: str, force: bool) -> ContainerRecord:
    record = host.records.require(name)
    if busy(record):
        if not force:
            raise ContainerError(f"container {name} is {record.state}", "stop it first, or use rm -f")
        if record.state == "running":
            record = stop(host, name, timeout=0)
    teardown(host, record)
    purge(host, record)
    return record


def exec_in(host: Host, name: str, cmd: list[str], capture: bool) -> subprocess.CompletedProcess:
    record = host.records.require(name)
    if record.state != "running" or record.pid is None or not owner_alive(record.process or ""):
        raise ContainerError(f"container {name} is not running")
    if not cmd:
        raise ContainerError("no command given", "usage: podnet container exec NAME -- CMD [ARG...]")
    return subprocess.run(exec_argv(record.pid, cmd), capture_output=capture, check=False)


def stale(record: ContainerRecord, supervising: Container[str],
          alive: Callable[[str], bool] = owner_alive) -> bool:
    """Does a container need finishing by the agent's sweep? Running with its process
    dead and nobody alive to finish it, or created by a process that died mid-run.
    Containers this agent supervises are finished by their reaper instead."""
    if record.id in supervising:
        return False
    supervisor_alive = alive(record.supervisor or "")
    if record.state == "running":
        return not alive(record.process or "") and not supervisor_alive
    return record.state == "created" and not supervisor_alive


def default_host(state_dir: str | None = None, socket_path: str | None = None) -> Host:
    from podnet.state import agent_socket
    from podnet.store import open_store

    paths = StatePaths.resolve(state_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    return Host(paths, open_store(str(paths.store)), agent_socket(socket_path))


__all__ = ["Host", "Launch", "attach_network", "create", "exec_in", "finish", "remove", "run_detached", "run_foreground",
           "settle", "stale", "stop", "stop_process", "teardown"]
