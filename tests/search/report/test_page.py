"""The report page: it names the winner and its architecture, is one self-contained file, and
says why a part is missing."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pandas as pd
from PIL import Image

from search.report import stored
from search.report.page import build, describe_arch
from search.report.stored import StoredRun, TrialRecord
from search.state.names import PLOTS_DIR, PREDICTIONS_FILE, REPORT_CSV, REPORT_MD
from tests.search.report.test_table import PNG_SIGNATURE, fake_run, fake_study


def _pngs_in_html(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_page_names_the_winner_and_is_self_contained(tmp_path: Path) -> None:
    run = fake_run()
    fake_study(tmp_path, [0.8, 0.6, 0.3, 0.4, 0.5, 0.7])
    page = build(tmp_path, run).read_text()
    markdown = (tmp_path / REPORT_MD).read_text()
    table = pd.read_csv(tmp_path / REPORT_CSV)
    assert len(table) == 5 and table["trial_id"].iloc[0] == "aaaa" == run.best["trial_id"]
    for text in (page, markdown):
        assert "Winner: trial aaaa (#1, recipe 1), small_cnn (from scratch)" in text
        assert "5 trials ran: 2 completed all 4 epochs, 2 stopped early by ASHA, 1 errored." in text
        assert "runner-up trial" in text and "bbbb" in text
    # one file: no scripts, styles or pictures fetched from anywhere
    assert not re.search(r'(src|href)\s*=\s*"(?!data:)', page) and "<link" not in page and "<script" not in page
    pictures = sorted((tmp_path / PLOTS_DIR).glob("*.png"))
    assert [p.stem for p in pictures] == ["best_learning_curves", "confusion_matrix", "parallel_coordinates",
                                          "param_importance", "test_images", "trial_curves"]
    assert sorted(_pngs_in_html(page)) == sorted(p.read_bytes() for p in pictures)
    for picture in pictures:
        assert f"{PLOTS_DIR}/{picture.name}" in markdown
        assert picture.read_bytes().startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(picture.read_bytes())) as image:
            assert image.width > 200 and image.height > 150


def test_a_page_without_importance_says_why(tmp_path: Path) -> None:
    page = build(tmp_path, fake_run()).read_text()
    assert "Parameter importance: not computed: this run kept no Optuna study (optuna.db is missing)." in page
    assert not (tmp_path / PLOTS_DIR / "param_importance.png").exists()


def test_a_run_without_a_model_still_gets_a_page(tmp_path: Path) -> None:
    run = fake_run()
    failed = StoredRun(run.facts, [TrialRecord("eeee", 1, run.trials[4].config, "boom")],
                       run.history[run.history["trial_id"] == "eeee"])
    stored.store(tmp_path, failed)
    page = build(tmp_path, stored.load(tmp_path)).read_text()
    assert "No trial produced a model" in page and "1 errored" in page
    assert not (tmp_path / PREDICTIONS_FILE).exists()


def test_the_winner_s_architecture_is_described_from_the_table() -> None:
    assert describe_arch({"arch": "resnet50_frozen", "weights": "imagenet"}) == \
        "resnet50_frozen (resnet50 backbone, frozen, ImageNet weights)"
    assert describe_arch({"arch": "efficientnet_b0_partial", "weights": "imagenet", "unfrozen_blocks": 3}) == \
        "efficientnet_b0_partial (efficientnet_b0 backbone, top 3 of 17 blocks trained, ImageNet weights)"
    assert describe_arch({"arch": "small_cnn", "weights": "imagenet"}) == "small_cnn (from scratch)"
    # an older stored run: no weights key, or an architecture the table no longer has
    assert describe_arch({"arch": "inception_frozen"}) == "inception_frozen (inception_v3 backbone, frozen)"
    assert describe_arch({"arch": "vgg_frozen", "weights": "imagenet"}) == "vgg_frozen (ImageNet weights)"
