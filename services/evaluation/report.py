"""Run models on a split and report: `evaluate` makes the report dict, `write_report` the files.

Each model is fitted on the train part, then asked for the top max(k) items of every test member
twice: with repeats allowed (the top-level "models", what a shop showing "buy again" sees) and
with each member's train purchases excluded ("models_excluding_bought", discovery only). Both are
scored with `metrics.score`; the report also breaks ndcg down by how much history members have
and shows where in the popularity distribution recommendations fall.

A model may also be told the split's instant and the items' prices before fitting
(`SplitAware`), and give notes for the report afterwards (`Noted`): the fleet's models say
there how they got their lists and what they trained on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np

from services.evaluation import metrics
from services.evaluation.baselines import Model
from services.evaluation.data import Dataset, Interaction
from services.evaluation.progress import bar, counter
from services.evaluation.splits import RELEVANT_TYPES, Split, basket_key, relevant

MODES = {"allowed": "models", "excluded": "models_excluding_bought"}
DEFAULT_KS = (5, 10, 20)
# Members asked for per `recommend` call: small enough for a smooth progress bar.
CHUNK = 512
SEGMENTS = (("1", 1, 1), ("2-4", 2, 4), ("5-9", 5, 9), ("10+", 10, None))
COLD_SEGMENT = "0 (cold)"
DECILES = 10
VERSIONED = {
    "numpy": "numpy",
    "scipy": "scipy",
    "implicit": "implicit",
    "faiss": "faiss-cpu",
    "ranx": "ranx",
    "recofleet": "recofleet",
}


@runtime_checkable
class SplitAware(Protocol):
    """A model told, before it is fitted, the instant its train part describes the shop at
    (`Split.as_of`) and the items' typical prices: never anything of the test part."""

    def prepare(self, as_of: datetime, prices: Mapping[str, float]) -> None: ...


@runtime_checkable
class Noted(Protocol):
    """A model with notes for the report once it has recommended (how it got its lists,
    what it trained on); `notes()["summary"]`, when given, is one line for the terminal."""

    def notes(self) -> dict[str, Any]: ...


def evaluate(
    dataset: Dataset,
    split: Split,
    models: Sequence[Model],
    ks: Sequence[int] = DEFAULT_KS,
    repeats: Sequence[str] = ("allowed", "excluded"),
    include_cold: bool = False,
    save_recommendations: Path | None = None,
    progress: bool = True,
    relevant_types: Collection[str] = RELEVANT_TYPES,
) -> dict[str, Any]:
    """Fit, recommend and score every model; the report dict (see the module docstring).

    `repeats` chooses the modes ("allowed", "excluded"); `save_recommendations` writes the
    lists of the allowed mode (else the first mode) as JSON lines.
    """
    ks = sorted(set(ks))
    unknown = [mode for mode in repeats if mode not in MODES]
    if unknown or not repeats:
        raise ValueError(f"repeats are {', '.join(MODES)}, not {list(repeats)}")
    truth = relevant(split, include_cold, relevant_types)
    run = _Run(dataset, split, truth, ks, list(repeats), relevant_types, progress)
    with _saving(save_recommendations) as saved:
        for model in bar(models, "models", progress, unit="model"):
            run.add(model, saved)
    return run.report(include_cold, save_recommendations)


class _Run:
    """What `evaluate` gathers model after model."""

    def __init__(
        self,
        dataset: Dataset,
        split: Split,
        truth: dict[str, set[str]],
        ks: list[int],
        modes: list[str],
        relevant_types: Collection[str],
        progress: bool,
    ) -> None:
        self.dataset, self.split, self.truth, self.ks, self.modes = dataset, split, truth, ks, modes
        self.progress, self.relevant_types = progress, relevant_types
        self.members = list(truth)
        self.bought = _bought(split.train, set(truth), relevant_types)
        self.segment_of = _segments(split.train, self.members)
        self.segment_k = 10 if 10 in ks else ks[-1]
        self.results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in modes}
        self.segments: dict[str, dict[str, dict[str, float]]] = {m: {} for m in modes}
        self.long_tail: dict[str, list[float]] = {}
        self.skipped: dict[str, str] = {}
        self.hyperparameters: dict[str, dict[str, object]] = {}
        self.curves: dict[str, dict[str, list[float]]] = {}
        self.notes: dict[str, dict[str, Any]] = {}
        self.deciles = _popularity_deciles(split.train)
        self.catalog = len({i.item_id for i in split.train})

    def add(self, model: Model, saved: IO[str] | None) -> None:
        """Fit `model`, then recommend and score in every mode (or record why it was skipped)."""
        started = time.perf_counter()
        if isinstance(model, SplitAware):
            model.prepare(self.split.as_of(), self.dataset.prices)
        with counter(f"fitting {model.name}", self.progress, total=1) as shown:
            model.fit(self.split.train, self.dataset.categories)
            shown.update()
        fit_seconds = time.perf_counter() - started
        # After fitting: what a model chose from the data (a half-life, a calibration) too.
        self.hyperparameters[model.name] = model.params()
        if model.skipped is not None:
            self.skipped[model.name] = model.skipped
            return
        for mode in self.modes:
            lists, seconds = self._recommend(model, mode)
            scored = self._score(model.name, mode, lists)
            scored.update(fit_seconds=fit_seconds, recommend_seconds=seconds)
            self.results[mode][model.name] = scored
            if mode == self._saved_mode():
                self.long_tail[model.name] = _decile_shares(lists.values(), self.deciles)
                _write_lines(saved, model.name, lists)
        self.curves[model.name] = model.curves()
        if isinstance(model, Noted):
            self.notes[model.name] = model.notes()

    def _recommend(self, model: Model, mode: str) -> tuple[dict[str, list[str]], float]:
        exclude = self.bought if mode == "excluded" else {}
        started = time.perf_counter()
        lists: dict[str, list[str]] = {}
        desc = f"recommending {model.name} ({mode})"
        with counter(desc, self.progress, total=len(self.members), unit="members") as shown:
            for start in range(0, len(self.members), CHUNK):
                chunk = self.members[start : start + CHUNK]
                lists.update(model.recommend(chunk, self.ks[-1], exclude))
                shown.update(len(chunk))
        return lists, time.perf_counter() - started

    def _score(self, name: str, mode: str, lists: dict[str, list[str]]) -> dict[str, float]:
        started = time.perf_counter()
        with counter(f"scoring {name} ({mode})", self.progress, total=2) as shown:
            scored = metrics.score(
                lists,
                self.truth,
                self.ks,
                self.split.train,
                self.dataset.categories,
                catalog_size=self.catalog,
            )
            shown.update()
            per = metrics.per_member(lists, self.truth, self.segment_k)
            self.segments[mode][name] = _segment_means(per, self.segment_of)
            shown.update()
        scored["score_seconds"] = time.perf_counter() - started
        return scored

    def _saved_mode(self) -> str:
        return "allowed" if "allowed" in self.modes else self.modes[0]

    def report(self, include_cold: bool, saved: Path | None) -> dict[str, Any]:
        split = self.split.describe(include_cold)
        split["test_members"] = len(self.members)
        split["relevant_types"] = sorted(self.relevant_types)
        report: dict[str, Any] = {MODES[mode]: self.results[mode] for mode in self.modes}
        report.update(
            skipped=self.skipped,
            dataset=self.dataset.describe(),
            split=split,
            ks=self.ks,
            hyperparameters=self.hyperparameters,
            segments=self._segments_report(),
            long_tail=self._long_tail_report(),
            curves={name: c for name, c in self.curves.items() if c},
            notes=self.notes,
            excluded_items="each test member's train items of type "
            + ", ".join(sorted(self.relevant_types)),
            recommendations={"path": str(saved), "mode": self._saved_mode(), "k": self.ks[-1]}
            if saved
            else None,
            versions=versions(),
            machine=machine(),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        return report

    def _segments_report(self) -> dict[str, Any]:
        sizes = Counter(self.segment_of.values())
        labels = [label for label in _segment_labels() if sizes.get(label)]
        return {
            "metric": f"ndcg@{self.segment_k}",
            "by": "train baskets (distinct timestamps where the data has no basket ids)",
            "labels": labels,
            "members": {label: sizes[label] for label in labels},
            **{MODES[mode]: self.segments[mode] for mode in self.modes},
        }

    def _long_tail_report(self) -> dict[str, Any]:
        return {
            "mode": self._saved_mode(),
            "k": self.ks[-1],
            "deciles": [f"{d + 1}" for d in range(DECILES)],
            "note": "decile 1 = the 10% most popular train items; last value: items not in train",
            "train_interactions": _decile_shares(
                ([i.item_id] for i in self.split.train), self.deciles
            ),
            "models": self.long_tail,
        }


def _bought(
    train: Sequence[Interaction], members: set[str], types: Collection[str]
) -> dict[str, set[str]]:
    """Per test member, the train items of a relevant type: what "excluded" mode leaves out."""
    bought: dict[str, set[str]] = {member: set() for member in members}
    for row in train:
        if row.member_id in members and row.type in types:
            bought[row.member_id].add(row.item_id)
    return bought


# --------------------------------------------------------------------------- segments


def _segment_labels() -> list[str]:
    return [COLD_SEGMENT, *(label for label, _, _ in SEGMENTS)]


def segment_label(baskets: int) -> str:
    """The history segment of a member with `baskets` train baskets."""
    for label, low, high in SEGMENTS:
        if baskets >= low and (high is None or baskets <= high):
            return label
    return COLD_SEGMENT


def _segments(train: Sequence[Interaction], members: Sequence[str]) -> dict[str, str]:
    wanted = set(members)
    baskets: dict[str, set[str]] = defaultdict(set)
    for row in train:
        if row.member_id in wanted:
            baskets[row.member_id].add(basket_key(row))
    return {member: segment_label(len(baskets.get(member, ()))) for member in members}


def _segment_means(per: Mapping[str, float], segment_of: Mapping[str, str]) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for member, value in per.items():
        values[segment_of[member]].append(value)
    return {label: float(np.mean(v)) for label, v in values.items()}


# --------------------------------------------------------------------------- long tail


def _popularity_deciles(train: Sequence[Interaction]) -> dict[str, int]:
    """item -> popularity decile (0 = the 10% most popular train items), by distinct members."""
    popularity, _ = metrics.member_counts(train)
    ranked = sorted(popularity, key=lambda item: (-popularity[item], item))
    return {item: rank * DECILES // max(len(ranked), 1) for rank, item in enumerate(ranked)}


def _decile_shares(lists: Any, deciles: Mapping[str, int]) -> list[float]:
    """Share of recommended slots per popularity decile, then the share outside train."""
    counts = [0] * (DECILES + 1)
    for items in lists:
        for item in items:
            counts[deciles.get(item, DECILES)] += 1
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


# --------------------------------------------------------------------------- saved lists


@contextmanager
def _saving(path: Path | None) -> Iterator[IO[str] | None]:
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yield handle


def _write_lines(handle: IO[str] | None, model: str, lists: Mapping[str, list[str]]) -> None:
    if handle is None:
        return
    for member, items in lists.items():
        record = {"model": model, "member_id": member, "items": items}
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_recommendations(path: Path) -> dict[str, dict[str, list[str]]]:
    """model -> member -> items, from a file written with `save_recommendations`."""
    lists: dict[str, dict[str, list[str]]] = defaultdict(dict)
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                lists[record["model"]][record["member_id"]] = record["items"]
    return dict(lists)


# --------------------------------------------------------------------------- the record


def versions() -> dict[str, str | None]:
    """Python and the versions of the libraries that decide the numbers."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for label, distribution in VERSIONED.items():
        try:
            found[label] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[label] = None
    return found


def machine() -> dict[str, Any]:
    """The CPU, core count, memory and OS the timings were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


# --------------------------------------------------------------------------- files


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write `report.json` and the self-contained `report.html` into `out_dir`."""
    from services.evaluation.html_report import render  # matplotlib: only when writing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(jsonable(report), indent=2) + "\n", encoding="utf-8")
    html_path.write_text(render(report), encoding="utf-8")
    return json_path, html_path


def jsonable(value: Any) -> Any:
    """`value` with numpy numbers as Python ones and NaN/inf as null: strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value
