"""A minimal client of the Kubernetes CRI (runtime.v1 RuntimeService) over gRPC.

Why: Debian ships no crictl and PyPI has no CRI stubs one can rely on, so the test
drives containerd's CRI plugin itself. The message classes are built at run time from a
FileDescriptorProto holding only the fields the tests use, numbered as in
k8s.io/cri-api pkg/apis/runtime/v1/api.proto (unknown fields of the answers are
skipped by protobuf). Enums are sent as their numbers (TCP 0, UDP 1, SCTP 2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "runtime.v1"
RUNTIME = f"/{PACKAGE}.RuntimeService/"
IMAGES = f"/{PACKAGE}.ImageService/"
PROTOCOLS = {"tcp": 0, "udp": 1, "sctp": 2}
SANDBOX_READY = 0

# message: [(field, number, type)]; a type is a scalar, a message name, "map" (string
# to string), or "repeated <message>".
SCHEMA: dict[str, list[tuple[str, int, str]]] = {
    "VersionRequest": [("version", 1, "string")],
    "VersionResponse": [("version", 1, "string"), ("runtime_name", 2, "string"),
                        ("runtime_version", 3, "string"), ("runtime_api_version", 4, "string")],
    "PortMapping": [("protocol", 1, "int32"), ("container_port", 2, "int32"),
                    ("host_port", 3, "int32"), ("host_ip", 4, "string")],
    "PodSandboxMetadata": [("name", 1, "string"), ("uid", 2, "string"),
                           ("namespace", 3, "string"), ("attempt", 4, "uint32")],
    "PodSandboxConfig": [("metadata", 1, "PodSandboxMetadata"), ("hostname", 2, "string"),
                         ("log_directory", 3, "string"), ("port_mappings", 5, "repeated PortMapping"),
                         ("labels", 6, "map"), ("linux", 8, "LinuxPodSandboxConfig")],
    "LinuxPodSandboxConfig": [("cgroup_parent", 1, "string")],
    "RunPodSandboxRequest": [("config", 1, "PodSandboxConfig"), ("runtime_handler", 2, "string")],
    "RunPodSandboxResponse": [("pod_sandbox_id", 1, "string")],
    "PodSandboxStatusRequest": [("pod_sandbox_id", 1, "string"), ("verbose", 2, "bool")],
    "PodIP": [("ip", 1, "string")],
    "PodSandboxNetworkStatus": [("ip", 1, "string"), ("additional_ips", 2, "repeated PodIP")],
    "PodSandboxStatus": [("id", 1, "string"), ("metadata", 2, "PodSandboxMetadata"),
                         ("state", 3, "int32"), ("network", 5, "PodSandboxNetworkStatus")],
    "PodSandboxStatusResponse": [("status", 1, "PodSandboxStatus"), ("info", 2, "map")],
    "StopPodSandboxRequest": [("pod_sandbox_id", 1, "string")],
    "StopPodSandboxResponse": [],
    "RemovePodSandboxRequest": [("pod_sandbox_id", 1, "string")],
    "RemovePodSandboxResponse": [],
    "ListPodSandboxRequest": [],
    "PodSandbox": [("id", 1, "string"), ("metadata", 2, "PodSandboxMetadata"), ("state", 3, "int32")],
    "ListPodSandboxResponse": [("items", 1, "repeated PodSandbox")],
    "ImageSpec": [("image", 1, "string")],
    "ImageStatusRequest": [("image", 1, "ImageSpec")],
    "Image": [("id", 1, "string")],
    "ImageStatusResponse": [("image", 1, "Image")],
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "bool": _F.TYPE_BOOL, "int32": _F.TYPE_INT32,
            "uint32": _F.TYPE_UINT32, "int64": _F.TYPE_INT64}


def _add_field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: str) -> None:
    repeated = kind.startswith("repeated ")
    kind = kind.removeprefix("repeated ")
    field = msg.field.add(name=name, number=number,
                          label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if kind == "map":  # map<string, string>: a repeated nested entry message
        entry = msg.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
        entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
        field.label, field.type = _F.LABEL_REPEATED, _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{msg.name}.{entry.name}"
    elif kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"


def _classes() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(name="podnet_tests_cri.proto", package=PACKAGE,
                                               syntax="proto3")
    for name, fields in SCHEMA.items():
        msg = proto.message_type.add(name=name)
        for field in fields:
            _add_field(msg, *field)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in SCHEMA}


M = _classes()


@dataclass(frozen=True)
class Port:
    container_port: int
    host_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class SandboxStatus:
    id: str
    state: int
    ip: str
    info: dict  # the verbose "info" JSON (containerd: runtimeSpec, pid, cniResult, ...)

    @property
    def netns_path(self) -> str:
        """The sandbox's network namespace, from the OCI spec containerd ran."""
        for ns in self.info["runtimeSpec"]["linux"]["namespaces"]:
            if ns["type"] == "network":
                return ns["path"]
        raise LookupError("the sandbox has no network namespace")


class CriClient:
    """RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox, ListPodSandbox,
    and ImageStatus (to wait until the CRI saw an image imported with ctr)."""

    def __init__(self, socket: str, timeout: float = 60.0) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any, service: str = RUNTIME) -> Any:
        stub = self.channel.unary_unary(
            service + method, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=M[f"{method}Response"].FromString,
        )
        return stub(request, timeout=self.timeout)

    def version(self) -> Any:
        return self._call("Version", M["VersionRequest"](version="v1"))

    def image_id(self, ref: str) -> str:
        """The image's id, "" while the CRI does not know it (ImageService.ImageStatus)."""
        request = M["ImageStatusRequest"](image=M["ImageSpec"](image=ref))
        return self._call("ImageStatus", request, IMAGES).image.id

    def run_pod_sandbox(self, name: str, namespace: str = "default", ports: Sequence[Port] = (),
                        cgroup_parent: str = "", uid: str | None = None) -> str:
        config = M["PodSandboxConfig"](
            metadata=M["PodSandboxMetadata"](name=name, uid=uid or f"uid-{name}", namespace=namespace),
            hostname=name,
            port_mappings=[M["PortMapping"](protocol=PROTOCOLS[p.protocol], container_port=p.container_port,
                                            host_port=p.host_port, host_ip=p.host_ip) for p in ports],
            labels={"podnet-test": name},
            linux=M["LinuxPodSandboxConfig"](cgroup_parent=cgroup_parent),
        )
        return self._call("RunPodSandbox", M["RunPodSandboxRequest"](config=config)).pod_sandbox_id

    def status(self, sandbox_id: str) -> SandboxStatus:
        reply = self._call("PodSandboxStatus", M["PodSandboxStatusRequest"](pod_sandbox_id=sandbox_id,
                                                                             verbose=True))
        info = json.loads(reply.info["info"]) if "info" in reply.info else {}
        return SandboxStatus(reply.status.id, reply.status.state, reply.status.network.ip, info)

    def stop(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", M["StopPodSandboxRequest"](pod_sandbox_id=sandbox_id))

    def remove(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox", M["RemovePodSandboxRequest"](pod_sandbox_id=sandbox_id))

    def sandboxes(self) -> list[str]:
        return [item.id for item in self._call("ListPodSandbox", M["ListPodSandboxRequest"]()).items]
