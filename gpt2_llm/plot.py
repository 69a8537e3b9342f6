"""A picture of one or several training runs, drawn from the metrics logs the Trainer writes.

A log (NAME.metrics.jsonl, beside the checkpoint) holds one JSON object per line:
    step records  {"step": 10, "loss": 5.1, "lr": 0.0006, "tokens_per_s": 3800, ..., "tokens": 40960}
                  (with --optimizer muon also "muon_lr": Muon's rate beside AdamW's "lr")
    eval records  {"step": 250, "eval": true, "val_loss": 4.2, "val_ppl": 66.7, ..., "tokens": 1024000}
                  (with --ema also "ema": 0.99: the loss is the weights' moving average's)
Any other record (a text sample, say) is ignored, and so is a line that is not JSON (the half-written
last line of a killed run). A run resumed after a kill logs again from its checkpoint's step: when
the steps go back, the records logged after that point are dropped and the later ones kept, since
they are the run that went on. Logs written before "tokens" was recorded are drawn against the step
number instead.

matplotlib is imported inside plot_runs, so importing this module stays cheap.
"""

import io
import json
import math
import os
from pathlib import Path

from basics import UserError, atomic_write

# The fields drawn; a record without them is not one of the two kinds.
TRAIN_FIELDS = ("step", "loss")
EVAL_FIELDS = ("step", "val_loss")


def read_metrics(path: str | os.PathLike) -> dict:
    """The training and evaluation series of one metrics log, as columns.

    Returns {"train": {field: [values]}, "eval": {field: [values]}}, ordered by step. A series has a
    column for each field that every one of its records holds, so "tokens" is there only when the
    whole series recorded it. Raises UserError when the file is missing or holds no record of
    either kind.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such metrics file")
    kept: list[tuple[tuple[int, int], dict]] = []  # (place in the run, record), in run order
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # blank or half-written
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                continue
            is_eval = record.get("eval") is True
            if not all(isinstance(record.get(k), (int, float)) for k in (EVAL_FIELDS if is_eval else TRAIN_FIELDS)):
                continue  # a text sample or a record of some other kind
            # A step's training record comes before its evaluation. A record that goes back in this
            # order begins a resumed run: what was logged after that place belongs to the run that died.
            place = (record["step"], int(is_eval))
            while kept and kept[-1][0] >= place:
                kept.pop()
            kept.append((place, record))
    if not kept:
        raise UserError(f"{path}: no training or evaluation records")
    return {"train": _columns([r for (_, e), r in kept if not e], TRAIN_FIELDS),
            "eval": _columns([r for (_, e), r in kept if e], EVAL_FIELDS)}


def _columns(records: list[dict], fields: tuple[str, ...]) -> dict[str, list]:
    """{field: [values]} for the fields every record holds (`fields` alone when there are no records)."""
    common = set.intersection(*(set(r) for r in records)) if records else set(fields)
    return {k: [r[k] for r in records] for k in sorted(common)}


def plot_runs(paths: str | os.PathLike | list, out: str | os.PathLike, labels: list[str] | None = None) -> None:
    """Draw the runs' losses (top) and learning rates (bottom) against tokens seen into the PNG `out`.

    paths: one metrics log or a list of them; labels: the name of each run in the legend (default: the
    file's stem without ".metrics"). Each run keeps one colour: its training loss a thin line, its
    validation loss markers on a line. When any series lacks "tokens", every run is drawn against the
    step number, so the runs stay comparable.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if labels is None:
        labels = [Path(p).name.removesuffix(".jsonl").removesuffix(".metrics") for p in paths]
    if len(labels) != len(paths):
        raise UserError(f"{len(labels)} labels for {len(paths)} runs: give one label per metrics file")
    fig = draw_runs([read_metrics(p) for p in paths], labels)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    with atomic_write(out) as f:  # a reader (an image viewer refreshing) never sees half a PNG
        f.write(buffer.getvalue())


def draw_runs(runs: list[dict], labels: list[str]):
    """The figure plot_runs saves, for runs as read_metrics returns them: a matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    by_tokens = all("tokens" in s for run in runs for s in run.values() if s["step"])
    x = "tokens" if by_tokens else "step"

    fig = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for i, (run, label) in enumerate(zip(runs, labels)):
        train, evals, colour = run["train"], run["eval"], f"C{i % 10}"
        if train["step"]:
            loss_ax.plot(train[x], train["loss"], color=colour, linewidth=0.8, alpha=0.6, label=f"{label} train")
        if evals["step"]:
            averaged = " (EMA weights)" if "ema" in evals else ""  # --ema: the average was evaluated
            if "val_accuracy" in evals:  # a classifier's run (train --classify)
                averaged += f", last accuracy {evals['val_accuracy'][-1]:.1%}"
            loss_ax.plot(evals[x], evals["val_loss"], color=colour, linewidth=1.8, marker="o", markersize=5,
                         label=f"{label} val{averaged}")
        if "lr" in train:
            lr_ax.plot(train[x], train["lr"], color=colour, linewidth=1.2)
        if "muon_lr" in train:  # Muon's matrices follow the same schedule from their own peak
            lr_ax.plot(train[x], train["muon_lr"], color=colour, linewidth=1.2, linestyle="--")
    loss_ax.set_ylim(*_loss_limits(runs))
    per_text = [("val_accuracy" in run["eval"]) for run in runs]  # a classifier's loss is one per text
    loss_ax.set_ylabel("loss (nats per text)" if all(per_text) else "loss (nats per token, per text for a classifier)"
                       if any(per_text) else "loss (nats per token)")  # fmt: skip
    loss_ax.legend(loc="upper right", ncols=1 if len(runs) < 3 else 2, fontsize=9)
    names = ", ".join(labels) if len(runs) <= 3 else f"{len(runs)} runs"  # a longer title would run off
    loss_ax.set_title(f"Training and validation loss: {names}")
    lr_ax.set_ylabel("learning rate")
    if any("muon_lr" in run["train"] for run in runs):  # say which line is which optimizer's
        lr_ax.legend(handles=[Line2D([], [], color="0.3", linewidth=1.2, label="AdamW (--lr)"),
                              Line2D([], [], color="0.3", linewidth=1.2, linestyle="--", label="Muon (--muon-lr)")],
                     loc="upper right", fontsize=8)
    lr_ax.set_ylim(bottom=0)
    lr_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _short_rate(v)))
    which = "this log has" if len(runs) == 1 else "a log has"
    lr_ax.set_xlabel("tokens seen" if by_tokens else f"optimizer step ({which} no token counts)")
    if by_tokens:
        lr_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short_count(v)))
    for ax in (loss_ax, lr_ax):
        ax.grid(True, alpha=0.3)
    return fig


def _loss_limits(runs: list[dict]) -> tuple[float, float]:
    """Y limits that leave out the first steps' loss (about ln(vocab size)), which would flatten the rest."""
    losses = [v for run in runs for s, k in ((run["train"], "loss"), (run["eval"], "val_loss"))
              for v in s.get(k, []) if math.isfinite(v)]
    if not losses:
        return 0.0, 1.0
    ordered = sorted(losses)
    # The top is the value 5% of the way down from the largest: a few early points run off the top.
    low, high = ordered[0], ordered[int(0.95 * (len(ordered) - 1))]
    margin = 0.05 * (high - low) or 0.5
    return low - margin, high + 3 * margin  # room above the curves for the legend


def _short_count(n: float) -> str:
    """1234567 -> '1.2M', 500000 -> '500k', 0 -> '0': a token count that reads at a glance."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


def _short_rate(v: float) -> str:
    """6e-4 -> '6e-4', 2.5e-4 -> '2.5e-4', 0 -> '0': a learning rate without Python's '6e-04' padding."""
    if not v:
        return "0"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"
