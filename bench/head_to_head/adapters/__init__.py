"""One adapter per process manager, all driven through the same :class:`Adapter` interface."""

from __future__ import annotations

from .base import Adapter, Tools
from .circus import CircusAdapter
from .pm2 import PM2Adapter
from .procguard import ProcguardAdapter
from .supervisord import SupervisordAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "procguard": ProcguardAdapter,
    "supervisord": SupervisordAdapter,
    "circus": CircusAdapter,
    "pm2": PM2Adapter,
}

__all__ = ["ADAPTERS", "Adapter", "CircusAdapter", "PM2Adapter", "ProcguardAdapter",
           "SupervisordAdapter", "Tools"]
