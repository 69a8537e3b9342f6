"""gpt2_llm: GPT-2 in PyTorch, written to be read.

Read leaf to root: config.py (the shape), attention.py, decoder.py, gpt2.py (the model,
generation, Hugging Face weights), checkpoint.py (saving and loading).
Importing the package never imports transformers: it is loaded only by the tests and benchmarks.
"""

from .attention import KVCache, QKVAttention, RotaryPositionEmbedding
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import PRESETS, GPT2Config
from .decoder import MLP, DecoderBlock, GPT2Decoder
from .gpt2 import GPT2

__all__ = [
    "GPT2", "GPT2Config", "PRESETS", "GPT2Decoder", "DecoderBlock", "MLP", "QKVAttention",
    "RotaryPositionEmbedding", "KVCache", "CheckpointError", "load_checkpoint", "save_checkpoint",
]  # fmt: skip
