"""Benchmarks: workloads, load runner, cluster simulator, reports."""
