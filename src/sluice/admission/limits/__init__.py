"""Rate, token and concurrency limits: pure GCRA arithmetic, in-process and Redis backends."""

from sluice.admission.limits.base import Limiter
from sluice.admission.limits.buckets import BucketState, Kind, Plan, RateBucket, SlotBucket, Verdict
from sluice.admission.limits.failover import FailoverLimiter
from sluice.admission.limits.memory import MemoryLimiter
from sluice.admission.limits.redis import RedisLimiter

__all__ = [
    "BucketState",
    "FailoverLimiter",
    "Kind",
    "Limiter",
    "MemoryLimiter",
    "Plan",
    "RateBucket",
    "RedisLimiter",
    "SlotBucket",
    "Verdict",
]
