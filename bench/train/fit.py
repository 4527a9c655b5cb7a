"""Train once on a loaded interaction store, timing each phase and reading the memory.

    python -m bench.train.fit --url URL --models DIR --factors F [--iterations I]
                              [--tracemalloc] --out OUT.json

A process of its own, so that its peak RSS is training's alone. Training runs through the
public `services.retrieval.training.train(store, models, settings, force=True)`; the
phases are timed by wrapping the training module's steps where they exist under these
names (a step renamed by a later rewrite is reported as not measured, never guessed):

    store load     read_frame     (reads every interaction line from the store)
    matrix build   confidences    (the member x item confidence matrix)
    ALS fit        fit_als
    index build    build_index    (inner-product and cosine indexes)
    write          Artifacts.save (the model files) and the rest of publishing
    calibration    calibrate      (a whole model on held-out data: ALS, indexes and all)

Calibration builds a model of its own, so its ALS fit and index builds are counted in
both rows; the report says how many calls each row holds. RSS is sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.profiles import peak_rss_mib, rss_mib
from services.retrieval import model as model_module
from services.retrieval import training
from services.retrieval.model_store import LocalModelStore
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore

PHASES = {
    "store load": (training, "read_frame"),
    "matrix build": (training, "confidences"),
    "ALS fit": (training, "fit_als"),
    "index build": (training, "build_index"),
    "calibration": (training, "calibrate"),
}


class Rss(threading.Thread):
    """The process's RSS every `every_s`, stamped with perf_counter time."""

    def __init__(self, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            self.samples.append((time.perf_counter(), rss_mib() or 0.0))

    def stop(self) -> None:
        self._done.set()
        self.join()

    def peak(self, started: float, ended: float) -> float | None:
        inside = [rss for at, rss in self.samples if started <= at <= ended]
        return max(inside, default=None)


class Phase:
    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.calls.append((started, time.perf_counter()))

        return timed


def instrument() -> dict[str, Phase]:
    phases: dict[str, Phase] = {}
    for name, (module, attribute) in PHASES.items():
        if hasattr(module, attribute):
            phases[name] = Phase()
            setattr(module, attribute, phases[name].wrap(getattr(module, attribute)))
    artifacts = getattr(model_module, "Artifacts", None)
    if artifacts is not None and hasattr(artifacts, "save"):
        phases["write"] = Phase()
        artifacts.save = phases["write"].wrap(artifacts.save)
    return phases


def summary(phases: dict[str, Phase], sampler: Rss) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in [*PHASES, "write"]:
        phase = phases.get(name)
        if phase is None:
            found[name] = None
            continue
        found[name] = {
            "calls": len(phase.calls),
            "seconds": sum(end - start for start, end in phase.calls),
            "peak_rss_mib": max(
                (p for s, e in phase.calls if (p := sampler.peak(s, e)) is not None),
                default=None,
            ),
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--factors", type=int, required=True)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    overrides: dict[str, Any] = {"factors": args.factors}
    if args.iterations:
        overrides["iterations"] = args.iterations
    settings = RetrievalSettings(**overrides)
    store = SqlInteractionStore.from_url(args.url, settings.event_weights)
    phases = instrument()
    sampler = Rss()
    steps: list[tuple[str, float]] = []
    if args.tracemalloc:
        tracemalloc.start()
    rss_before = rss_mib()
    sampler.start()
    began = time.perf_counter()
    outcome = training.train(
        store,
        LocalModelStore(args.models),
        settings,
        force=True,
        progress=lambda step: steps.append((step, time.perf_counter() - began)),
    )
    train_s = time.perf_counter() - began
    sampler.stop()
    traced = tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc else None
    folder = args.models / "versions" / outcome.version
    figures = {
        "train_s": train_s,
        "steps": steps,
        "phases": summary(phases, sampler),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tracemalloc_peak_mib": traced,
        "model_mib": sum(f.stat().st_size for f in folder.iterdir()) / 2**20,
        "meta": {
            k: outcome.meta.get(k)
            for k in ("members", "items", "interactions", "factors", "index", "metrics")
        },
        "settings": {"factors": settings.factors, "iterations": settings.iterations},
    }
    store.close()
    args.out.write_text(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
