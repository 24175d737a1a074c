"""Pieces of ``benchmarks/dashboard_snapshot.py``: the pure layout/query/legend logic
(``layout``) and the task module the snapshot's workers run (``tasks/``)."""
