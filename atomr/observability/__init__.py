"""Observability: Prometheus metrics (definitions and the cluster-wide merge), structured logs, and
the per-deployment statistics that routing policies weigh.

May import: `atomr.core`. Never Thespian, actors or the HTTP front.
"""
