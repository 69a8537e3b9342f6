"""The default run's plan (plan.py): the rule's figures at its anchor, how they scale, and what a flag given changes."""

import pytest

from gpt2_llm import plan
from gpt2_llm.config import GPT2Config, TrainConfig
from gpt2_llm.plan import plan_run

XEON = plan.ANCHOR_FLOPS  # the training FLOP/s the anchor was measured at (the probe's, on a 2-core Xeon)
EPYC = 0.4e12 * 0.35  # a slower CPU: a 2-core AMD EPYC's bf16 peak x EXPECTED_MFU
MB = 1_000_000


def test_the_anchor_is_the_recipe_shape():
    """1.1 MB of text, 10 minutes at the anchor's speed: the recipe's 4 layers x 384, context 512, batch 4, Muon;
    20 MB, which 10 minutes do not see once: ANCHOR_LAYERS (the Gutenberg runs' best), shallower."""
    p = plan_run(1_115_394, 600, XEON)
    assert (p.shape["n_layer"], p.shape["n_embd"], p.shape["n_head"], p.shape["block_size"]) == (4, 384, 6, 512)
    assert p.vocab_size == 2048
    assert p.settings["batch_size"] == 4
    assert (p.settings["optimizer"], p.settings["muon_lr"], p.settings["lr"]) == ("muon", 0.012, 0.002)
    assert p.settings["weight_decay"] == 1.0 and "epochs" not in p.settings
    assert {k: p.shape[k] for k in plan.ARCHITECTURE} == plan.ARCHITECTURE
    GPT2Config(vocab_size=p.vocab_size, **p.shape), TrainConfig(**p.settings)  # both valid
    large = plan_run(20_600_000, 600, XEON)
    assert large.shape["n_layer"] == plan.ANCHOR_LAYERS == 3 and large.expected["epochs"] < 1


@pytest.mark.parametrize("size,seconds,flops", [(100_000, 84, XEON), (1_115_394, 600, EPYC), (20 * MB, 1800, 346e12)])
def test_the_default_model_exports(size, seconds, flops):
    """Whatever its size, a planned model is one transformers holds (as Apertus: test_export has its logits)."""
    from gpt2_llm.export import export_problem, export_type

    config = GPT2Config(vocab_size=512, **plan_run(size, seconds, flops).shape)
    assert export_type(config) == "apertus" and export_problem(config) is None


def test_plans_scale_with_text_and_time():
    """The documented table: a small text gets a small, short run with more dropout; more time a deeper
    model and a larger batch; more text a larger vocabulary and less dropout."""
    small, mid, large = (plan_run(size, 600, XEON) for size in (100_000, MB, 20 * MB))
    assert [p.vocab_size for p in (small, mid, large)] == [512, 2048, 8192]
    assert small.shape["n_layer"] < mid.shape["n_layer"]  # capped by the text: 25 weights a token at most
    assert small.settings["epochs"] == plan.MAX_EPOCHS and small.shape["dropout"] == 0.3
    assert large.shape["dropout"] == 0.0 < mid.shape["dropout"]  # 20 MB is not seen twice in 10 minutes
    assert plan_run(1_115_394, 600, EPYC).shape["dropout"] == 0.2  # about 3.7 passes, as the recipe
    short, long = plan_run(20 * MB, 84, XEON), plan_run(20 * MB, 1800, XEON)
    assert short.shape["n_layer"] < large.shape["n_layer"] < long.shape["n_layer"]
    assert short.settings["batch_size"] < large.settings["batch_size"] < long.settings["batch_size"]


def test_a_text_short_for_the_compute_gets_the_depth_the_text_can_teach():
    """Where the compute's depth would see the text MIN_PASSES times or more, the depth is the largest within
    WEIGHTS_PER_TOKEN that still sees it that often: deeper than the compute's for Tiny Shakespeare, shallower
    for Pride and Prejudice; a text seen less often keeps the compute's."""
    shakespeare, pride, gutenberg = (plan_run(size, 600, XEON) for size in (1_115_394, 202_132, 20_600_000))
    assert [p.shape["n_layer"] for p in (shakespeare, pride, gutenberg)] == [4, 2, plan.ANCHOR_LAYERS]
    assert "3 would see it 21 times" in shakespeare.why[1] and "for the compute" in gutenberg.why[1]
    cap = plan.WEIGHTS_PER_TOKEN * shakespeare.expected["train_tokens"]
    assert plan.block_weights(5) > cap >= plan.block_weights(4)


def test_a_faster_device_gets_a_larger_model_where_the_text_allows():
    gpu = plan_run(20 * MB, 600, 346e12)
    assert gpu.shape["n_layer"] > plan_run(20 * MB, 600, EPYC).shape["n_layer"]
    assert plan.block_weights(gpu.shape["n_layer"]) <= plan.WEIGHTS_PER_TOKEN * gpu.expected["train_tokens"]
    assert plan_run(1_115_394, 600, 346e12).shape["n_layer"] == 4  # Tiny Shakespeare teaches no more than that


def test_a_flag_replaces_its_part_and_what_depends_on_it_follows():
    p = plan_run(MB, 600, EPYC, shape={"n_layer": 8})
    assert (p.shape["n_layer"], p.shape["n_embd"], p.shape["n_head"]) == (8, 768, 12)
    assert p.settings["lr"] == 0.0014  # 2e-3 x sqrt(384 / 768), to two figures
    given = plan_run(MB, 600, EPYC, shape={"dropout": 0.05, "mlp": "gelu"},
                     settings={"lr": 1e-3, "optimizer": "adamw"}, vocab_size=4096)
    assert (given.shape["dropout"], given.shape["mlp"], given.vocab_size) == (0.05, "gelu", 4096)
    assert (given.settings["lr"], given.settings["optimizer"]) == (1e-3, "adamw") and "muon_lr" not in given.settings


def test_a_preset_is_its_model_and_the_settings_are_still_planned():
    p = plan_run(MB, 600, EPYC, preset="tiny", settings={"steps": 50})
    assert {k: p.shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")} == {
        "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}
    assert "rope" not in p.shape  # GPT-2's architecture: the config's defaults
    assert p.expected["steps"] == 50 and p.settings["ema"] == 0.0  # too short a run to average
    assert "epochs" not in p.settings


def test_heads_divide_the_width_with_an_even_head_size():
    assert [plan.heads_for(w) for w in (384, 448, 500, 64, 96)] == [6, 7, 5, 1, 2]
    for width in range(32, 1200, 32):
        heads = plan.heads_for(width)
        assert width % heads == 0 and (width // heads) % 2 == 0


@pytest.mark.parametrize("epochs, dropout", [(0.5, 0.0), (1.0, 0.0), (2.6, 0.15), (4.0, 0.2), (8.0, 0.3), (30.0, 0.3)])
def test_dropout_grows_with_the_passes(epochs, dropout):
    assert plan.planned_dropout(epochs) == dropout


def test_processes_share_the_batch_of_their_joint_compute():
    one = plan_run(20 * MB, 600, 2 * EPYC)
    two = plan_run(20 * MB, 600, EPYC, processes=2)
    assert one.shape == two.shape and one.expected["tokens_per_s"] == two.expected["tokens_per_s"]
    assert two.settings["batch_size"] == round(one.settings["batch_size"] / 2)


def test_a_measured_speed_replaces_the_estimate():
    """The probe's tokens/s sets the passes, and with them dropout and the steps; the shape is the compute's."""
    guess = plan_run(MB, 600, EPYC)
    slow = plan_run(MB, 600, EPYC, tokens_per_s=guess.expected["tokens_per_s"] / 4)
    assert slow.shape | {"dropout": 0} == guess.shape | {"dropout": 0}
    assert slow.expected["tokens_per_s"] == round(guess.expected["tokens_per_s"] / 4)
    assert slow.expected["epochs"] == pytest.approx(guess.expected["epochs"] / 4, rel=0.01)
    assert slow.shape["dropout"] < guess.shape["dropout"]


def test_the_probe_measures_a_whole_training_step():
    import torch

    from gpt2_llm.trainer import measure_tokens_per_s

    config = GPT2Config(vocab_size=300, n_layer=2, n_head=2, n_embd=64, block_size=32, rope=True, qk_norm=True)
    speed = measure_tokens_per_s(config, TrainConfig(optimizer="muon", batch_size=2), torch.device("cpu"), torch.float32)
    assert 0 < speed < float("inf")
