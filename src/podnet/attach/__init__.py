"""Attachment kinds, by the config's `mode`."""

from __future__ import annotations

from podnet.attach.base import Attacher
from podnet.attach.bridge import BridgeAttacher
from podnet.attach.macvlan import MacvlanAttacher
from podnet.attach.routed import RoutedAttacher

ATTACH: dict[str, Attacher] = {"bridge": BridgeAttacher(), "macvlan": MacvlanAttacher(),
                               "routed": RoutedAttacher()}
