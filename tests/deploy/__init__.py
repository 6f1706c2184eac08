"""Tests of deploy/: container images, compose and Kubernetes manifests checked against the code, the
health probe, and the service's Prometheus metrics (service/metrics.py)."""
