"""Discrete-event cluster simulator: many simulated engines behind the gateway's routing policies.

from sluice.bench.cluster import simulate
result = simulate(workload, engines=8, policy="least_load")
print(result.summary())
"""

from sluice.bench.cluster.result import EngineReport, RunResult
from sluice.bench.cluster.sim import FactsBuilder, default_facts, simulate

__all__ = ["EngineReport", "FactsBuilder", "RunResult", "default_facts", "simulate"]
