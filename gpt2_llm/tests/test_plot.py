import json
import subprocess
import sys

import pytest

from gpt2_llm.plot import _short_count, _short_rate, draw_runs, plot_runs, read_metrics


def write_log(path, records, tail=""):
    """A metrics log of `records`, one JSON object a line, then `tail` as it is (a half-written line, say)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def run_records(steps=range(10, 101, 10), eval_every=50, tokens=True, lr=6e-4):
    """Training records every 10 steps, an evaluation every `eval_every`, as the Trainer logs them."""
    records = []
    for step in steps:
        records.append({"step": step, "loss": 10 / step**0.3, "lr": lr, "tokens_per_s": 3800, "mfu": 0.29,
                        "elapsed_s": step / 10, **({"tokens": step * 4096} if tokens else {})})
        if step % eval_every == 0:
            records.append({"step": step, "eval": True, "val_loss": 10 / step**0.3 + 0.1, "val_ppl": 50.0,
                            "val_bpb": 2.0, **({"tokens": step * 4096} if tokens else {})})
    return records


def test_read_metrics_splits_training_and_evaluation_records(tmp_path):
    run = read_metrics(write_log(tmp_path / "a.metrics.jsonl", run_records()))
    assert run["train"]["step"] == list(range(10, 101, 10))
    assert run["train"]["tokens"] == [s * 4096 for s in range(10, 101, 10)]
    assert run["train"]["lr"] == [6e-4] * 10
    assert run["eval"]["step"] == [50, 100]
    assert run["eval"]["val_loss"] == pytest.approx([10 / 50**0.3 + 0.1, 10 / 100**0.3 + 0.1])


def test_read_metrics_skips_garbled_lines_and_unknown_records(tmp_path):
    records = run_records(range(10, 31, 10), eval_every=20)
    records.insert(1, {"step": 10, "sample": "Once upon a time"})  # a text sample: no loss
    records.insert(2, {"note": "no step at all"})
    path = write_log(tmp_path / "a.metrics.jsonl", records, tail='\n{"step": 40, "loss": 3.')  # killed mid-line
    path.write_text("not json\n" + path.read_text())
    run = read_metrics(path)
    assert run["train"]["step"] == [10, 20, 30]
    assert run["eval"]["step"] == [20]


def test_read_metrics_keeps_the_resumed_run_after_the_steps_go_back(tmp_path):
    # Killed at step 70 with the last checkpoint at 50 (where it evaluated), resumed from there:
    # the records after step 50 are the dead run's and give way to the resumed run's.
    dead = run_records(range(10, 71, 10), eval_every=50, lr=1.0)
    resumed = run_records(range(60, 101, 10), eval_every=50, lr=2.0)
    run = read_metrics(write_log(tmp_path / "a.metrics.jsonl", dead + resumed))
    assert run["train"]["step"] == list(range(10, 101, 10))
    assert run["train"]["lr"] == [1.0] * 5 + [2.0] * 5
    assert run["eval"]["step"] == [50, 100]


def test_read_metrics_drops_evaluations_of_the_dead_run_past_the_resume_point(tmp_path):
    # Resumed from an older checkpoint (step 20): the dead run's evaluation at 50 must go too.
    dead = run_records(range(10, 61, 10), eval_every=50)
    resumed = run_records(range(30, 41, 10), eval_every=50)
    run = read_metrics(write_log(tmp_path / "a.metrics.jsonl", dead + resumed))
    assert run["train"]["step"] == [10, 20, 30, 40]
    assert run["eval"]["step"] == []


def test_tokens_is_a_column_only_when_every_record_has_it(tmp_path):
    old = run_records(range(10, 31, 10), tokens=False)
    new = run_records(range(40, 61, 10), tokens=True)
    run = read_metrics(write_log(tmp_path / "a.metrics.jsonl", old + new))
    assert "tokens" not in run["train"]
    assert run["train"]["step"] == [10, 20, 30, 40, 50, 60]


def test_read_metrics_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.metrics.jsonl: no such metrics file"):
        read_metrics(tmp_path / "missing.metrics.jsonl")
    path = write_log(tmp_path / "empty.metrics.jsonl", [{"step": 10, "sample": "text"}], tail="\n{garbled")
    with pytest.raises(ValueError, match="empty.metrics.jsonl: no training or evaluation records"):
        read_metrics(path)


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000  # axes, lines and text, not an empty canvas


@pytest.mark.parametrize("tokens", [True, False])
def test_plot_one_run(tmp_path, tokens):
    log = write_log(tmp_path / "a.metrics.jsonl", run_records(tokens=tokens))
    plot_runs(log, tmp_path / "a.png")
    assert_png(tmp_path / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.metrics.jsonl", "a.png"]  # no temporary file left


@pytest.mark.parametrize("second_has_tokens", [True, False])
def test_plot_two_runs(tmp_path, second_has_tokens):
    a = write_log(tmp_path / "a.metrics.jsonl", run_records())
    b = write_log(tmp_path / "b.metrics.jsonl", run_records(range(10, 151, 10), tokens=second_has_tokens))
    plot_runs([a, b], tmp_path / "ab.png", labels=["lr 6e-4", "lr 3e-4"])
    assert_png(tmp_path / "ab.png")


def test_plot_a_run_with_only_evaluations(tmp_path):
    log = write_log(tmp_path / "a.metrics.jsonl", [r for r in run_records() if r.get("eval")])
    plot_runs(str(log), tmp_path / "a.png")
    assert_png(tmp_path / "a.png")


def test_the_picture_names_the_averaged_evaluations_and_draws_muons_rate(tmp_path):
    plain = run_records()
    muon = [{**r, "ema": 0.99} if r.get("eval") else {**r, "muon_lr": 6 * r["lr"]} for r in run_records()]
    runs = [read_metrics(write_log(tmp_path / f"{name}.metrics.jsonl", records))
            for name, records in (("plain", plain), ("muon", muon))]
    loss_ax, lr_ax = draw_runs(runs, ["plain", "muon"]).axes
    assert loss_ax.get_legend_handles_labels()[1] == ["plain train", "plain val", "muon train",
                                                      "muon val (EMA weights)"]  # fmt: skip
    # The learning rates: plain's AdamW, then muon's AdamW (solid) and Muon (dashed), in the run's colour.
    assert [(line.get_linestyle(), line.get_color(), max(line.get_ydata())) for line in lr_ax.get_lines()] == [
        ("-", "C0", 6e-4), ("-", "C1", 6e-4), ("--", "C1", pytest.approx(3.6e-3))]
    assert [t.get_text() for t in lr_ax.get_legend().get_texts()] == ["AdamW (--lr)", "Muon (--muon-lr)"]
    assert draw_runs(runs[:1], ["plain"]).axes[1].get_legend() is None  # no Muon: nothing to tell apart


def test_a_classifiers_picture_says_its_loss_is_per_text_and_its_last_accuracy(tmp_path):
    records = [{**r, "val_accuracy": 0.9 + r["step"] / 1000} if r.get("eval") else r for r in run_records()]
    classifier = read_metrics(write_log(tmp_path / "c.metrics.jsonl", records))
    loss_ax = draw_runs([classifier], ["spam"]).axes[0]
    assert loss_ax.get_legend_handles_labels()[1] == ["spam train", "spam val, last accuracy 100.0%"]
    assert loss_ax.get_ylabel() == "loss (nats per text)"
    language_model = read_metrics(write_log(tmp_path / "m.metrics.jsonl", run_records()))
    assert draw_runs([language_model], ["m"]).axes[0].get_ylabel() == "loss (nats per token)"
    mixed = draw_runs([classifier, language_model], ["spam", "m"]).axes[0].get_ylabel()
    assert mixed == "loss (nats per token, per text for a classifier)"


def test_plot_errors(tmp_path):
    log = write_log(tmp_path / "a.metrics.jsonl", run_records())
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot_runs([log], tmp_path / "a.png", labels=["x", "y"])
    with pytest.raises(ValueError, match="nothing.metrics.jsonl: no such metrics file"):
        plot_runs([log, tmp_path / "nothing.metrics.jsonl"], tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_tick_labels_read_at_a_glance():
    assert [_short_count(n) for n in (0, 500, 500_000, 1_250_000, 3e9)] == ["0", "500", "500k", "1.25M", "3B"]
    assert [_short_rate(v) for v in (0, 6e-4, 2.5e-4, 1e-3)] == ["0", "6e-4", "2.5e-4", "1e-3"]


def test_importing_the_plot_module_never_imports_matplotlib():
    code = "import sys, gpt2_llm.plot; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
