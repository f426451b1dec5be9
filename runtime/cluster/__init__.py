"""Coordination of a fleet of workers through Redis: partitions, leases with fencing
epochs, heartbeats and balancing. See docs/cluster.md.

The client is redis-py's synchronous one, on threads the package owns: renewals must keep
going while the event loop is busy, and a thread with a blocking client depends on nothing
else. Callers on an event loop run the few blocking calls (`tick`, `acquire`) with
`asyncio.to_thread`.
"""

from runtime.cluster.balance import Balancer, Plan, fair_share, preference
from runtime.cluster.keeper import LeaseKeeper, LostCallback
from runtime.cluster.keys import ClusterKeys
from runtime.cluster.leases import Lease, PartitionLeases, PartitionState, new_token, owner_of
from runtime.cluster.membership import Membership, WorkerInfo
from runtime.cluster.node import ClusterConfig, ClusterNode, connect
from runtime.cluster.partitions import (
    ClusterNotInitialized,
    PartitionCountMismatch,
    ensure_partition_count,
    partition_of,
)

__all__ = [
    "Balancer", "ClusterConfig", "ClusterKeys", "ClusterNode", "ClusterNotInitialized",
    "Lease", "LeaseKeeper", "LostCallback", "Membership", "PartitionCountMismatch",
    "PartitionLeases", "PartitionState", "Plan", "WorkerInfo", "connect",
    "ensure_partition_count", "fair_share", "new_token", "owner_of", "partition_of",
    "preference",
]
