"""Skiplock operator: runs and autoscales JobQueue workers on Kubernetes."""
