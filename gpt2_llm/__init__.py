"""gpt2_llm: GPT-2 in PyTorch, written to be read.

Read leaf to root: config.py (the shape, and how to train), attention.py, decoder.py, generation.py
(sampling, the text stream), gpt2.py (the model; prefill, decode_step, generate), classifier.py
(its head replaced by one row per class), lora.py (low-rank adapters: add, merge, PEFT's
folder), checkpoint.py (the file format), hf_llama.py and export.py (transformers' folders, both
ways: the Llama family's names, then the rest), loading.py (the one way to load a model: a
checkpoint, a folder or a hub name), data.py (text to batches), labelled.py (labelled texts for
classification), hardware.py (device, precision, peak FLOP/s), distributed.py (torchrun),
trainer.py (the training loop), plot.py (a picture of a run).
Then main.py's commands as functions a Python user calls: vocab.py (tokenize, encode, decode),
plan.py (a new run's shape and schedule from the text and the time), runs.py (train: a new,
continued or fine-tuning run), predict.py (predict, chat), evaluation.py (eval);
export.export_folder and serve.server.serve are export's and serve's.

Names are imported on first use, so `gpt2_llm.config` loads without torch (the command line's
tokenizer commands stay fast), and importing the package never imports transformers, tokenizers,
safetensors or huggingface_hub.
"""

import importlib

_WHERE = {
    "GPT2": "gpt2", "GPT2Config": "config", "TrainConfig": "config", "PRESETS": "config", "ConfigError": "config",
    "GPT2Decoder": "decoder", "DecoderBlock": "decoder", "MLP": "decoder",
    "QKVAttention": "attention", "RotaryPositionEmbedding": "attention", "KVCache": "attention",
    "CheckpointError": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "save_model": "checkpoint", "load": "loading", "Loaded": "loading",
    "model_from_hf": "export", "write_model": "export", "export_folder": "export",
    "Trainer": "trainer", "evaluate": "trainer",
}  # fmt: skip
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
