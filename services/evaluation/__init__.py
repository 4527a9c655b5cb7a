"""Offline evaluation of recommendation models: data readers, splits, metrics, baselines, report.

`recofleet evaluate` (see `services.evaluation.cli`) reads a public or generic data set, splits it
(temporal, leave-last-basket-out or random per member), fits each model on the train part,
scores its top-k lists against the test part and writes `report.json` and `report.html`.
"""
