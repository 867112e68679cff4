"""editloop's editor SDK. See clients/README.md."""

from .client import AsyncEditloopClient, EditloopClient, Generation, Tracked
from .delivery import Backoff, DeliveryStats, Rejected
from .ids import event_id
from .queue import DurableQueue, QueueFull
from .settle import DEFAULT_SETTLE_S, Settled, SettleTracker

__all__ = [
    "AsyncEditloopClient",
    "Backoff",
    "DEFAULT_SETTLE_S",
    "DeliveryStats",
    "DurableQueue",
    "EditloopClient",
    "Generation",
    "QueueFull",
    "Rejected",
    "SettleTracker",
    "Settled",
    "Tracked",
    "event_id",
]
