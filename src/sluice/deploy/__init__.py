"""Deployment: Kubernetes manifests, dashboards and alert rules."""
