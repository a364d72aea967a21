"""Execution on Ray: start or join a cluster, run a grid of RunSpecs."""
