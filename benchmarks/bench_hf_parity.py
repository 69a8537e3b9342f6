"""Parity with transformers: the same model and tokenizer give the same text, loss and ids.

    python benchmarks/bench_hf_parity.py            # the tables in BENCHMARKS.md ("Parity with transformers")
    python benchmarks/bench_hf_parity.py --quick    # 2 prompts, a 200 KB slice of the text

(1) A random GPT-2 (GPT-2's vocabulary and tokenizer files, 4 layers, 128 wide, context 256) saved
    by transformers' save_pretrained into a temporary folder: greedy text of
    `main.py predict PROMPT N FOLDER --greedy` against transformers' generate(do_sample=False) on
    the same folder, then the largest logit difference and the loss of both on a text.
(2) The same for a random Llama (LlamaForCausalLM of the same size, 2 key/value heads, an untied
    head, an MLP 344 wide), then the other way: the folder as our loader reads it, written back by
    `main.py export`, against the original in transformers (largest logit difference).
(3) Tokenizers exported by `main.py export`: GPT-2's own, and two learned by bpe.py (GPT-2's and
    GPT-4's pattern, with <|endoftext|> and a second special token): the ids of
    AutoTokenizer.from_pretrained(folder) against bpe.py's encode(text, allowed_special="all") on
    ../shared/data/multilingual.txt, and the decoded text against the original.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
from bpe import BPE
from gpt2_llm import GPT2, GPT2Config, save_checkpoint

PROMPTS = ["The meaning of life is", "Once upon a time", "def fibonacci(n):", "Der Sinn des Lebens ist",
           "In 1948 the General Assembly", "Сегодня утром", "吾輩は猫である。", "<|endoftext|>First"]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=40, help="greedy tokens per prompt")
    p.add_argument("--quick", action="store_true", help="2 prompts, a 200 KB slice of the text")
    return p.parse_args(argv)


def random_gpt2_folder(folder: Path) -> None:
    """transformers' GPT-2 of GPT-2's vocabulary, random (a wide init, so greedy choices are not
    near-ties), with GPT-2's own tokenizer files, as save_pretrained writes them."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=256, n_embd=128, n_layer=4, n_head=4, initializer_range=0.1)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    shutil.copy(DATA / "gpt2" / "encoder.json", folder / "vocab.json")
    shutil.copy(DATA / "gpt2" / "vocab.bpe", folder / "merges.txt")


def random_llama_folder(folder: Path) -> None:
    """transformers' Llama of GPT-2's vocabulary, random as above, with GPT-2's tokenizer files and
    tokenizer.json (AutoTokenizer reads a Llama's vocab.json + merges.txt only when tokenizer_config.json
    names GPT-2's class); <|endoftext|> ends text."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50257, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      initializer_range=0.1, bos_token_id=50256, eos_token_id=50256)  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    shutil.copy(DATA / "gpt2" / "encoder.json", folder / "vocab.json")
    shutil.copy(DATA / "gpt2" / "vocab.bpe", folder / "merges.txt")
    transformers.GPT2TokenizerFast.from_pretrained(folder).save_pretrained(folder)  # + tokenizer.json, its class


def greedy_rows(folder: Path, prompts: list[str], new: int) -> list[tuple]:
    """(prompt, same text?, tokens compared) for each prompt: main.py predict against generate()."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new, do_sample=False)[0, ids.size(1) :].tolist()
        out = out[: out.index(50256)] if 50256 in out else out  # both stop at <|endoftext|>
        ours = subprocess.run([sys.executable, str(ROOT / "main.py"), "predict", prompt, str(new), str(folder),
                               "--greedy", "--device", "cpu"], capture_output=True, text=True, check=True).stdout
        rows.append((prompt, ours == prompt + tokenizer.decode(out) + "\n", len(out)))
    return rows


def logits_and_loss(folder: Path, text: str) -> tuple[float, float, float]:
    """Largest logit difference, and the mean loss of each model, on the text's first 256 tokens."""
    import transformers

    from gpt2_llm import load

    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ours = load(folder)
    ids = torch.tensor([ours.tokenizer.encode_ordinary(text[:20_000])[:257]])
    with torch.no_grad():
        logits, loss = ours.model(ids[:, :-1], ids[:, 1:])
        their_logits = theirs(ids[:, :-1]).logits
    their_loss = torch.nn.functional.cross_entropy(their_logits[0], ids[0, 1:])
    return (logits - their_logits).abs().max().item(), loss.item(), their_loss.item()


def reexport_difference(folder: Path, out: Path, text: str) -> tuple[str, float]:
    """`main.py export` of the folder (read by our loader): the class transformers loads it as, and
    the largest difference of its logits from the original folder's on the text's first 256 tokens."""
    import transformers

    subprocess.run([sys.executable, str(ROOT / "main.py"), "export", str(folder), str(out)], capture_output=True,
                   check=True)  # fmt: skip
    original = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    again = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = transformers.AutoTokenizer.from_pretrained(folder)(text[:20_000], return_tensors="pt")["input_ids"][:, :256]
    with torch.no_grad():
        return type(again).__name__, (again(ids).logits - original(ids).logits).abs().max().item()


def print_parity(name: str, folder: Path, prompts: list[str], new: int, text: str) -> None:
    """The greedy-text table and the logits line of one transformers folder."""
    print(f"\n### {name}: main.py predict --greedy against generate(do_sample=False), {new} tokens\n")
    print("| prompt | same text | new tokens compared |")
    print("|---|---|---:|")
    for prompt, same, n in greedy_rows(folder, prompts, new):
        print(f"| {prompt!r} | {'yes' if same else 'NO'} | {n} |")
    diff, ours, theirs = logits_and_loss(folder, text)
    print(f"\nlogits on 256 tokens of the text: largest difference {diff:.2e}; "
          f"loss ours {ours:.6f}, transformers {theirs:.6f}")


def export_tokenizer(tokenizer: BPE, folder: Path) -> None:
    """A tiny model of the tokenizer's vocabulary with the tokenizer, through `main.py export`."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=64))
    checkpoint = folder.with_suffix(".pt")
    save_checkpoint(checkpoint, {"model_config": asdict(model.config), "model": model.state_dict(),
                                 "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}})
    subprocess.run([sys.executable, str(ROOT / "main.py"), "export", str(checkpoint), str(folder)],
                   capture_output=True, check=True)


def tokenizer_row(name: str, tokenizer: BPE, folder: Path, text: str) -> tuple:
    """(name, tokens, same ids?, first difference or None, decoded text equal?)."""
    import transformers

    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    ours_ids = tokenizer.encode(text, allowed_special="all")
    their_ids = theirs(text, add_special_tokens=False)["input_ids"]
    first = next((i for i, (a, b) in enumerate(zip(ours_ids, their_ids)) if a != b), None)
    if first is None and len(ours_ids) != len(their_ids):
        first = min(len(ours_ids), len(their_ids))
    return name, len(ours_ids), ours_ids == their_ids, first, theirs.decode(their_ids) == text


def main(argv=None) -> None:
    import tokenizers
    import transformers

    args = parse_args(argv)
    transformers.logging.set_verbosity_error()  # not the warning that the text is longer than the context
    text = (DATA / "multilingual.txt").read_text(encoding="utf-8")
    text = (text[:200_000] if args.quick else text) + "\n😀🎉 emoji, CRLF\r\n\r\n   spaces <|endoftext|> 12345678"
    prompts = PROMPTS[:2] if args.quick else PROMPTS
    print(f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        random_gpt2_folder(tmp / "gpt2-random")
        print_parity("GPT-2 (GPT2LMHeadModel)", tmp / "gpt2-random", prompts, args.new_tokens, text)
        random_llama_folder(tmp / "llama-random")
        print_parity("Llama (LlamaForCausalLM)", tmp / "llama-random", prompts, args.new_tokens, text)
        kind, diff = reexport_difference(tmp / "llama-random", tmp / "llama-exported", text)
        print(f"written back by main.py export: a {kind}, largest logit difference from the original {diff:.2e}")

        print(f"\n### Exported tokenizers: AutoTokenizer against bpe.py on multilingual.txt ({len(text):,} characters)\n")
        print("| tokenizer | tokens | same ids | first difference | decode == text |")
        print("|---|---:|---|---:|---|")
        sample = text[: len(text) // 4]
        tokenizers_to_check = {
            "GPT-2's own (50,257)": BPE.from_gpt2(DATA / "gpt2" / "encoder.json", DATA / "gpt2" / "vocab.bpe"),
            "learned, GPT-2 pattern (4,096)": BPE.train(sample, 4096, "gpt2", ("<|endoftext|>", "<|extra|>")),
            "learned, GPT-4 pattern (4,096)": BPE.train(sample, 4096, "gpt4", ("<|endoftext|>", "<|extra|>")),
        }
        for i, (name, tokenizer) in enumerate(tokenizers_to_check.items()):
            export_tokenizer(tokenizer, tmp / f"export{i}")
            row = tokenizer_row(name, tokenizer, tmp / f"export{i}", text)
            first = "-" if row[3] is None else f"{row[3]:,}"
            print(f"| {row[0]} | {row[1]:,} | {'yes' if row[2] else 'NO'} | {first} | {'yes' if row[4] else 'NO'} |")


if __name__ == "__main__":
    main()
