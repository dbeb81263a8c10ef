"""The report's figures, each drawn and saved as one PNG.

Learning curves, where ASHA stopped trials, parameter importance, parallel coordinates,
the confusion matrix, a grid of test images.

Built on matplotlib's object API (`Figure` renders with Agg by itself), never pyplot: no
global figure registry to leak into, nothing left open once a figure is saved.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import cm, colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from search.report.table import param_columns

DPI = 110
BEST_COLOR = "#c0392b"
WRONG_COLOR = "#c0392b"
# How each trial's line ends: the marker says how the trial ended.
ENDINGS = {"completed": ("o", "#1f77b4", "completed all epochs"),
           "early_stopped": ("X", "#7f7f7f", "stopped early by ASHA"),
           "budget_stopped": ("D", "#9467bd", "stopped by the time budget"),
           "unfinished": ("P", "#8c564b", "unfinished (the search was interrupted)"),
           "error": ("s", "#ff7f0e", "error")}
OCCASIONAL = {"budget_stopped", "unfinished"}  # in the legend only when a trial ended so
NOT_APPLICABLE = -0.15  # where a parameter a trial did not use sits on its axis


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    fig.clear()  # the Figure is not registered anywhere: clearing frees its artists now
    return path


def _epoch_axis(ax, max_epoch: int) -> None:
    ax.set_xlabel("epoch")
    ax.set_xticks(range(1, max(1, max_epoch) + 1))
    ax.grid(alpha=0.3)


def learning_curves(history: pd.DataFrame, title: str, path: Path) -> Path:
    """Train and validation accuracy and loss per epoch of one trial."""
    fig = Figure(figsize=(10, 3.6))
    for ax, metric in zip(fig.subplots(1, 2), ("acc", "loss")):
        for split, style in (("train", "--"), ("val", "-")):
            ax.plot(history["epoch"], history[f"{split}_{metric}"], style, marker="o", label=f"{split}_{metric}")
        _epoch_axis(ax, int(history["epoch"].max()))
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def trial_curves(history: pd.DataFrame, table: pd.DataFrame, objective: str, best: dict | None,
                 rungs: list[int], max_epochs: int, path: Path) -> Path:
    """Every trial's objective per epoch; each line ends in a marker for how the trial ended
    (completed, stopped by ASHA, error); the best trial (`best`: its id and best epoch) is drawn
    thick on top, with a star at the epoch whose model was exported."""
    best_id = best["trial_id"] if best else None
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    for rung in rungs:
        ax.axvline(rung, color="#bbbbbb", linestyle=":", zorder=0)
    for _, row in table.iloc[::-1].iterrows():  # worst first, so better trials are drawn on top
        epochs = history[history["trial_id"] == row["trial_id"]]
        if epochs.empty:
            continue
        marker, color, _ = ENDINGS[row["status"]]
        is_best = row["trial_id"] == best_id
        line_color = BEST_COLOR if is_best else color
        ax.plot(epochs["epoch"], epochs[objective], color=line_color, alpha=1 if is_best else 0.55,
                linewidth=3 if is_best else 1.2, zorder=3 if is_best else 2)
        ax.plot(epochs["epoch"].iloc[-1], epochs[objective].iloc[-1], marker=marker, color=line_color,
                markersize=11 if is_best else 8, markeredgecolor="black", markeredgewidth=0.6, zorder=4)
    shown = set(table["status"])
    handles = [Line2D([], [], color=color, marker=marker, markeredgecolor="black", label=label)
               for status, (marker, color, label) in ENDINGS.items() if status in shown or status not in OCCASIONAL]
    handles.append(Line2D([], [], color=BEST_COLOR, linewidth=3, label="best trial"))
    chosen = history[(history["trial_id"] == best_id) & (history["epoch"] == (best or {}).get("epoch"))]
    if not chosen.empty:
        star = {"marker": "*", "color": "gold", "markeredgecolor": "black", "markersize": 18}
        ax.plot(chosen["epoch"], chosen[objective], linestyle="none", zorder=5, **star)
        handles.append(Line2D([], [], linestyle="none", label="its best epoch (exported)", **star))
    _epoch_axis(ax, max_epochs)
    ax.set_ylabel(objective)
    if rungs:
        handles.append(Line2D([], [], color="#bbbbbb", linestyle=":", label="ASHA rungs (where it compares)"))
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_title(f"{objective} of every trial per epoch; the marker shows how each trial ended")
    return _save(fig, path)


def importance_bars(importances: dict[str, float], path: Path) -> Path:
    """Horizontal bars of parameter importances, the most important on top."""
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 0.45 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (Optuna, normalised to sum 1)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _axis_positions(values: pd.Series) -> tuple[np.ndarray, list[float], list[str]]:
    """Map one column to [0, 1] (categories to evenly spaced positions, numbers linearly, or
    logarithmically when they span two decades); missing values go below the axis."""
    present = values.dropna()
    numeric = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
    positions = np.full(len(values), NOT_APPLICABLE)
    mask = values.notna().to_numpy()
    if numeric:
        number = present.astype(float).to_numpy()
        log = number.min() > 0 and number.max() / number.min() >= 100
        scaled = np.log10(number) if log else number
        low, high = scaled.min(), scaled.max()
        positions[mask] = (scaled - low) / (high - low) if high > low else 0.5
        ticks, labels = ([0.0, 1.0], [f"{present.min():.3g}", f"{present.max():.3g}"]) if high > low else \
            ([0.5], [f"{present.iloc[0]:.3g}"])
    else:
        categories = sorted(present.astype(str).unique())
        spacing = {c: (i / (len(categories) - 1) if len(categories) > 1 else 0.5) for i, c in enumerate(categories)}
        positions[mask] = [spacing[str(v)] for v in present]
        ticks, labels = list(spacing.values()), list(spacing)
    if not mask.all():
        ticks, labels = [*ticks, NOT_APPLICABLE], [*labels, "n/a"]
    return positions, ticks, labels


def parallel_coordinates(table: pd.DataFrame, objective: str, mode: str, best_id: str | None, path: Path) -> Path:
    """Each trial as a line across its parameters (the ones that varied) and the objective,
    coloured by the objective; the best trial thick on top."""
    rows = table[table[objective].notna()].reset_index(drop=True)
    params = param_columns(rows, varied=True)
    columns = [*params, objective]
    fig = Figure(figsize=(max(6.0, 1.6 * len(columns) + 1), 4.8))
    ax = fig.subplots()
    mapped = {c: _axis_positions(rows[c]) for c in columns}
    if mode == "min":  # the objective's axis always has the better end up
        positions, ticks, labels = mapped[objective]
        mapped[objective] = (1 - positions, [1 - t for t in ticks], labels)
    values = rows[objective].astype(float).to_numpy()
    spread = values.max() - values.min() if len(values) else 0.0
    # 0 = the lowest value, 1 = the highest, whatever the mode: the colour map encodes the mode.
    shade = (values - values.min()) / spread if spread > 0 else np.full(len(values), 0.5)
    order = np.argsort(shade if mode == "max" else -shade)
    # Darker is better, whatever the mode; the palest blues stay visible on white.
    blues = colormaps["Blues"](np.linspace(0.3, 1.0, 256))
    cmap = ListedColormap(blues if mode == "max" else blues[::-1])
    for i in order:  # best last, on top
        ys = [mapped[c][0][i] for c in columns]
        best = rows.at[i, "trial_id"] == best_id
        ax.plot(range(len(columns)), ys, color=BEST_COLOR if best else cmap(shade[i]),
                linewidth=3.2 if best else 1.3, alpha=1 if best else 0.8, zorder=3 if best else 2,
                marker="o", markersize=3)
    for x, column in enumerate(columns):
        ax.axvline(x, color="black", linewidth=0.8, zorder=1)
        _, ticks, labels = mapped[column]
        for tick, label in zip(ticks, labels):
            ax.text(x + 0.04, tick, label, fontsize=8, va="center", ha="left",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
    ax.set_xticks(range(len(columns)), [*(c.removeprefix("param.") for c in params), f"{objective}\n(better up)"])
    ax.set_xlim(-0.2, len(columns) - 0.5)
    ax.set_ylim(NOT_APPLICABLE - 0.08, 1.08)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    scale = cm.ScalarMappable(cmap=cmap)
    scale.set_clim(values.min() if len(values) else 0, values.max() if len(values) else 1)
    fig.colorbar(scale, ax=ax, label=objective, fraction=0.04, pad=0.02)
    ax.set_title(f"parameters vs {objective} (red: best trial; n/a: parameter not used by that trial)")
    return _save(fig, path)


def confusion_heatmap(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """The confusion matrix as a heatmap with counts; rows are true classes."""
    size = max(3.5, 0.6 * len(classes) + 1.8)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues", vmin=0)
    threshold = confusion.max() / 2 if confusion.size else 0
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def reliability_diagram(before: list[dict], after: list[dict], path: Path) -> Path:
    """Accuracy against confidence per bin, before and after temperature scaling: a calibrated
    model's points lie on the diagonal; the bars count the test images in each bin (after)."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="perfectly calibrated")
    for bins, label, color, marker in ((before, "before", "#ff7f0e", "s"), (after, "after (temperature)", "#1f77b4",
                                                                            "o")):
        shown = [b for b in bins if b["count"]]
        ax.plot([b["confidence"] for b in shown], [b["accuracy"] for b in shown], marker=marker, color=color,
                label=label)
    counts = ax.twinx()
    counts.bar([(b["low"] + b["high"]) / 2 for b in after], [b["count"] for b in after],
               width=after[0]["high"] - after[0]["low"] if after else 0.1, color="#1f77b4", alpha=0.15)
    counts.set_ylabel("test images (after)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    return _save(fig, path)


def image_grid(images: np.ndarray, true: list[str], predicted: list[str], probability: list[float],
               path: Path) -> Path:
    """Test images titled with the true class, the prediction and its probability; mistakes
    have a red title and frame."""
    columns = min(5, max(1, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    fig = Figure(figsize=(2.3 * columns, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax, image, truth, guess, p in zip(axes, images, true, predicted, probability):
        wrong = truth != guess
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"true: {truth}\npred: {guess} ({p:.2f})", fontsize=9,
                     color=WRONG_COLOR if wrong else "black", fontweight="bold" if wrong else "normal")
        for spine in ax.spines.values():
            spine.set_visible(wrong)
            spine.set_color(WRONG_COLOR)
            spine.set_linewidth(3)
    return _save(fig, path)


def accuracy_vs_latency(measured: pd.DataFrame, objective: str, mode: str, exported_id: str | None,
                        limit: float | None, path: Path, others: pd.DataFrame | None = None) -> Path:
    """The measured trials (`trial_id`, `trial_number`, `objective`, `batch1_p50_ms`) at their
    batch-1 latency and objective, better up; the exported model a star. `limit`: the worst
    objective `select="fastest_within=D"` accepted, drawn as a dashed line. `others`: the
    finished trials below the top ones, in grey."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if others is not None and len(others):
        ax.scatter(others["batch1_p50_ms"], others["objective"], s=25, color="#bbbbbb", edgecolor="#777777",
                   linewidth=0.5, zorder=1, label="other finished trial")
        measured_all = pd.concat([measured, others], ignore_index=True)
    else:
        measured_all = measured
    exported = measured["trial_id"] == exported_id
    ax.scatter(measured["batch1_p50_ms"], measured["objective"], s=45, color="#1f77b4", edgecolor="black",
               linewidth=0.5, zorder=2, label="top trial (leaderboard)")
    ax.scatter(measured.loc[exported, "batch1_p50_ms"], measured.loc[exported, "objective"], marker="*", s=320,
               color="gold", edgecolor="black", zorder=3, label="exported")
    for _, row in measured.iterrows():
        ax.annotate(f"#{row['trial_number']}", (row["batch1_p50_ms"], row["objective"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    if limit is not None:
        ax.axhline(limit, color="#7f7f7f", linestyle="--", zorder=1, label="fastest_within: the worst accepted")
    latencies = measured_all["batch1_p50_ms"]
    if len(latencies) and latencies.min() > 0 and latencies.max() / latencies.min() >= 10:
        ax.set_xscale("log")  # a backbone and a small convnet differ 100x: a linear axis squeezes one side
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.1, 0.2, 0.5, 1, ...: plain numbers
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(0.12)
    if mode == "min":
        ax.invert_yaxis()  # better up, whatever the mode
    ax.set_xlabel("batch-1 latency, p50 (ms, onnxruntime CPU)")
    ax.set_ylabel(f"{objective} (better up)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{objective} against serving latency of the finished trials")
    return _save(fig, path)
