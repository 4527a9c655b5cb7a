"""Retrieval at catalog scale: the item index and GetCandidates on 250,000 items.

Run it with `python -m bench.retrieval` (see `__main__.py`). The modules: `synthetic`
draws ALS-like item and member factors, `inprocess` measures the index in process,
`shop` loads and trains a synthetic shop in a process of its own, `client` makes the
gRPC calls.
"""
