"""Retrieval training at the size of the full Online Retail file: phases and memory.

Run it with `python -m bench.train` (see `__main__.py`); `fit` trains in a process of its
own so that its memory is training's alone.
"""
