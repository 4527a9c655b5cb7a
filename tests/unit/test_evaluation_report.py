"""The evaluation report: its keys, the files written, saved lists, and the CLI."""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.evaluation import cli, metrics, splits
from services.evaluation.baselines import EASE, BuyAgain, Popularity
from services.evaluation.data import Dataset, Interaction
from services.evaluation.report import evaluate, read_recommendations, write_report

T0 = datetime(2024, 1, 1, tzinfo=UTC)
KS = (2, 5)
ITEMS = [f"item{n}" for n in range(12)]
CATEGORIES = {item: f"cat{n % 3}" for n, item in enumerate(ITEMS[:9])}  # 3 uncategorised


def shop(members: int = 40, seed: int = 5) -> Dataset:
    """Members with 1 to 12 baskets over 60 days, each of 1 to 4 items, some favourites."""
    rng = random.Random(seed)
    rows = []
    for n in range(members):
        favourites = rng.sample(ITEMS, 3)
        for basket in range(1 + n % 12):
            day = rng.uniform(0, 60)
            pool = [rng.choice(favourites if rng.random() < 0.7 else ITEMS) for _ in range(4)]
            picked = set(pool[: rng.randint(1, 4)])
            for item in sorted(picked):
                when = T0 + timedelta(days=day)
                rows.append(Interaction(f"m{n}", item, when, basket=f"m{n}-{basket}"))
    return Dataset("shop", "memory", sorted(rows, key=lambda i: i.at), dict(CATEGORIES))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    data = shop()
    split = splits.temporal(data, last_days=15)
    saved = tmp_path_factory.mktemp("saved") / "recs.jsonl"
    models = [Popularity(), BuyAgain(), EASE(max_items=5)]
    report = evaluate(data, split, models, ks=KS, save_recommendations=saved, progress=False)
    return report, saved


def test_report_has_the_required_keys(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, _ = evaluated
    for key in ("models", "models_excluding_bought", "skipped", "dataset", "split", "ks"):
        assert key in report
    for key in ("hyperparameters", "versions", "machine", "created_at"):
        assert key in report
    assert report["ks"] == list(KS)
    assert (
        set(report["models"])
        == set(report["models_excluding_bought"])
        == {
            "popularity",
            "buy_again",
        }
    )
    assert "max_items 5" in report["skipped"]["ease"]  # skipped: only listed there
    for entry in [*report["models"].values(), *report["models_excluding_bought"].values()]:
        assert set(metrics.metric_names(KS)) <= set(entry)
        assert entry["fit_seconds"] >= 0 and entry["recommend_seconds"] >= 0
    libraries = {"python", "numpy", "scipy", "implicit", "faiss", "ranx", "recofleet"}
    assert set(report["versions"]) == libraries
    assert set(report["machine"]) == {"cpu", "cores", "memory_gib", "os"}
    assert report["split"]["name"] == "temporal"
    assert report["split"]["test_members"] > 0
    assert report["dataset"]["members"] == 40
    assert report["hyperparameters"]["ease"] == {"l2": 500.0, "max_items": 5}


def test_excluding_bought_leaves_buy_again_nothing(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, _ = evaluated
    assert report["models"]["buy_again"]["hit_rate@5"] > 0
    assert report["models_excluding_bought"]["buy_again"]["hit_rate@5"] == 0.0


def test_segments_and_long_tail(evaluated: tuple[dict[str, Any], Path]) -> None:
    report, _ = evaluated
    segments = report["segments"]
    assert segments["metric"] == "ndcg@5"  # 10 is not among the ks: the largest k
    assert sum(segments["members"].values()) == report["split"]["test_members"]
    assert set(segments["labels"]) <= {"1", "2-4", "5-9", "10+"}
    assert set(segments["models"]["popularity"]) == set(segments["labels"])
    shares = report["long_tail"]["models"]["popularity"]
    assert len(shares) == 11 and sum(shares) == pytest.approx(1.0)


def test_saved_recommendations_give_the_reported_metrics(
    evaluated: tuple[dict[str, Any], Path],
) -> None:
    report, saved = evaluated
    lines = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    assert {line["model"] for line in lines} == {"popularity", "buy_again"}
    assert all(set(line) == {"model", "member_id", "items"} for line in lines)
    assert all(len(line["items"]) <= max(KS) for line in lines)
    data = shop()
    split = splits.temporal(data, last_days=15)
    lists = read_recommendations(saved)
    for name, by_member in lists.items():
        recomputed = metrics.score(
            by_member, splits.relevant(split), KS, split.train, data.categories
        )
        for key, value in recomputed.items():
            assert report["models"][name][key] == pytest.approx(value), key


def test_written_files(evaluated: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    report, _ = evaluated
    json_path, html_path = write_report(report, tmp_path / "out")
    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    assert loaded["models"]["popularity"]["ndcg@5"] == report["models"]["popularity"]["ndcg@5"]
    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<table>" in page and "Metrics at k = 5" in page and "buy_again" in page
    assert page.count("data:image/png;base64,") >= 3  # by k, by segment, long tail
    assert "ease" in page and "max_items" in page  # the skipped model and why
    assert 'src="http' not in page and "<link" not in page  # self-contained


# --------------------------------------------------------------------------- CLI


def shop_csv(path: Path, data: Dataset) -> Path:
    lines = ["member_id,item_id,timestamp,basket,category"]
    for row in data.interactions:
        category = data.categories.get(row.item_id, "")
        lines.append(f"{row.member_id},{row.item_id},{row.at.isoformat()},{row.basket},{category}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_runs_an_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = shop_csv(tmp_path / "shop.csv", shop())
    saved, out = tmp_path / "recs.jsonl", tmp_path / "report"
    argv = ["evaluate", "--data", str(data), "--split", "last-basket", "--k", "2,5"]
    argv += ["--models", "popularity,item_knn,served", "--out", str(out)]
    assert cli.main([*argv, "--save-recommendations", str(saved)]) == 0
    printed = capsys.readouterr()
    assert "ndcg@5" in printed.out and "item_knn" in printed.out and "served" in printed.out
    assert f"wrote {out / 'report.html'}" in printed.out
    assert "recommending popularity" in printed.err  # progress bars, on stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["models"]) == {"popularity", "item_knn", "served"}
    assert report["split"]["name"] == "last_basket"
    # The fleet's model records how it was trained: the settings and its calibration.
    assert report["hyperparameters"]["served"]["factors"] == 64
    assert "calibration" in report["hyperparameters"]["served"]
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert {line["model"] for line in lines} == {"popularity", "item_knn", "served"}


def test_cli_with_a_given_train_and_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shop()
    split = splits.temporal(data, last_days=15)
    train = shop_csv(tmp_path / "train.csv", Dataset("t", "", split.train, data.categories))
    test = shop_csv(tmp_path / "test.csv", Dataset("t", "", split.test, data.categories))
    argv = ["evaluate", "--train", str(train), "--test", str(test), "--k", "5"]
    argv += ["--models", "popularity", "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == ""
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["split"]["name"] == "given"
    assert report["split"]["train_interactions"] == len(split.train)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--models", "nonsense"], 2, "unknown model(s) nonsense"),
        (["--train", "x.csv"], 2, "not both"),
        (["--cutoff", "2024-01-20", "--last-days", "3"], 2, "not both"),
    ],
)
def test_cli_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    data = shop_csv(tmp_path / "shop.csv", shop(members=5))
    base = ["evaluate", "--data", str(data), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main([*base, *argv]) == code
    assert message in capsys.readouterr().err


def test_cli_reports_bad_data_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("member_id,item_id,timestamp\nm,i,2024-01-01\nm,j,soon\n", encoding="utf-8")
    argv = ["evaluate", "--data", str(bad), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main(argv) == 1
    assert f"{bad}:3: column 'timestamp'" in capsys.readouterr().err


def test_add_parser_plugs_into_a_main_parser() -> None:
    parser = argparse.ArgumentParser(prog="recofleet")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--data", "d.csv", "--out", "o", "--k", "10,5"])
    assert args.k == [5, 10] and args.split == "temporal" and args.handler is cli.run
    default = ["popularity", "trending", "buy_again", "item_knn", "ease", "als", "served"]
    default += ["served-blend", "served-ltr"]
    assert args.models == default


def test_cli_evaluates_what_the_fleets_store_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.events import CatalogItem, Event
    from services.common.settings import FleetSettings
    from services.retrieval.settings import RetrievalSettings
    from services.retrieval.store import SqlInteractionStore

    monkeypatch.setenv("RECOFLEET_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("RECOFLEET_RETRIEVAL_DATABASE_URL", raising=False)
    url = FleetSettings().sqlite_url("retrieval")
    (tmp_path / "var").mkdir()
    store = SqlInteractionStore.from_url(url, RetrievalSettings().event_weights)
    data = shop()
    store.save_catalog([CatalogItem(item_id=i, category=c) for i, c in data.categories.items()])
    store.apply_events(
        [
            Event(
                event_id=f"e-{n}",
                type="purchase",
                member_id=r.member_id,
                item_id=r.item_id,
                timestamp=r.at,
            )
            for n, r in enumerate(data.interactions)
        ]
    )
    store.close()
    out = tmp_path / "report"
    argv = ["evaluate", "--data", "store", "--split", "last-basket", "--k", "5"]
    assert cli.main([*argv, "--models", "popularity", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["dataset"]["interactions"] == len(data.interactions)
    assert report["dataset"]["categorised_items"] == len(data.categories)
    assert report["models"]["popularity"]["ndcg@5"] > 0
