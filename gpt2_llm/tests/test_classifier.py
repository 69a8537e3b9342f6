"""The classifier model (classifier.py): the last real token's score, padding ignored, transformers' own."""

import pytest
import torch

from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.classifier import GPT2Classifier
from gpt2_llm.tests.conftest import assert_close

PAD = 0  # the padding id; the texts below never hold it


def classifier(classes=3) -> GPT2Classifier:
    torch.manual_seed(0)
    return GPT2Classifier(GPT2(GPT2Config(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=32)), classes,
                          pad_id=PAD).eval()


def padded(texts: list[list[int]]) -> torch.Tensor:
    width = max(map(len, texts))
    return torch.tensor([t + [PAD] * (width - len(t)) for t in texts])


def test_a_row_is_scored_at_its_last_real_token_whatever_the_padding():
    model = classifier()
    texts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    ids = padded(texts)
    with torch.no_grad():
        batch, _ = model(ids)
        for row, text in enumerate(texts):
            alone = model(torch.tensor([text]))[0][0]
            assert_close(batch[row], alone, atol=1e-6)
            assert_close(alone, model.score(model.gpt.hidden_states(torch.tensor([text]))[0, -1]), atol=0)
    assert batch.shape == (3, 3)


def test_our_logits_are_transformers_gpt2_for_sequence_classification(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gpt2_llm.export import write_model

    model = classifier(classes=4)
    write_model(model.gpt, tmp_path)
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path, num_labels=4, pad_token_id=PAD).eval()
    with torch.no_grad():
        theirs.score.weight.copy_(model.score.weight)
        ids = padded([[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [20, 21, 22, 23]])
        diff = (theirs(ids).logits - model(ids)[0]).abs().max().item()
    assert diff <= 1e-4, f"largest difference {diff:.3g}"


def test_a_classifier_needs_two_classes():
    with pytest.raises(ValueError, match="two or more classes"):
        classifier(classes=1)
