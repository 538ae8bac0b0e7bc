"""Tokenizer speed: CLIP encoding throughput and BPE training time, against the references.

    python benchmarks/bench_tokenizer.py

1. Encoding captions with OpenAI's vocabulary: minclip's CLIPTokenizer against
   open_clip's SimpleTokenizer (the same pure-Python algorithm), with Hugging
   Face ``tokenizers`` (Rust, one thread) as the far anchor. Each tokenizer
   starts with an empty cache and makes one pass over the corpus. Two corpora:
   ASCII captions, and the same captions each with a non-ASCII word (so that
   every caption goes through ftfy).
2. Training a byte-level BPE with 8,000 ids on ~4 MB of the standard
   library's source: minclip's incremental trainer against ``tokenizers``'
   BpeTrainer with the same pre-tokenization (GPT-2's regex, one thread).
   Plus the size the course uses: a CLIP tokenizer of 4,000 ids on 5,000 short texts.
"""
import importlib.util
import os
import random
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread for the Rust reference too
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minclip.tokenizer import BPETokenizer, CLIPTokenizer, find_openai_vocab  # noqa: E402
from minclip.tokenizer.bpe import printable  # noqa: E402
from minclip.tokenizer.clip import CLIP_SPLIT_PATTERN  # noqa: E402
from minclip.tokenizer.corpus import stdlib_texts  # noqa: E402


def captions(n, seed=0):
    """COCO-like captions from a few hundred words, in a Zipf-like mix."""
    rng = random.Random(seed)
    people = ["a man", "a woman", "two men", "a young boy", "a little girl", "a group of people", "a skier",
              "a surfer", "a chef", "a baseball player", "an old man", "three children", "a tennis player"]
    animals = ["a dog", "a black cat", "two horses", "a brown bear", "a herd of cows", "a giraffe",
               "an elephant", "a flock of birds", "a large white dog", "a zebra", "a sheep"]
    things = ["a red car", "a city bus", "a plate of food", "a pizza", "a laptop", "a wooden bench",
              "a stop sign", "a clock tower", "a fire hydrant", "a kite", "a bowl of fruit", "a train"]
    actions = ["standing next to", "sitting on", "riding", "walking down", "looking at", "holding",
               "playing with", "parked near", "eating", "flying over", "lying on", "in front of"]
    places = ["the beach", "a busy street", "a grassy field", "the kitchen counter", "a snowy hill",
              "the living room", "a dirt road", "the ocean", "a wooden table", "the airport", "a park"]
    extras = ["", "", "", " on a sunny day", " at night", " in the rain", " with a smile", " near a lake"]
    out = []
    for _ in range(n):
        subject = rng.choice(rng.choice([people, animals, things]))
        text = f"{subject} {rng.choice(actions)} {rng.choice(places)}{rng.choice(extras)}"
        text = text[0].upper() + text[1:] if rng.random() < 0.7 else text
        out.append(text + rng.choice([".", ".", "", " .", "!"]))
    return out


def load_open_clip():
    """open_clip's SimpleTokenizer from its single file (``import open_clip`` needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def rust_clip(clip):
    """OpenAI's vocabulary in Hugging Face ``tokenizers``, built as transformers' CLIPConverter does.

    Its cleaning is NFC + whitespace + lower case (no ftfy, no HTML unescaping).
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    vocab = {printable(token): i for i, token in enumerate(clip.vocab[:-2])}
    merges = [(printable(clip.vocab[left]), printable(clip.vocab[right])) for left, right in clip.merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>",
                                     continuing_subword_prefix="", fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN.removeprefix("(?i)")), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tokenizer


def timed(function, *args):
    """(CPU seconds, result): process time, not wall time, so that other jobs on the machine
    do not blur the ratios (everything timed here runs on one thread)."""
    start = time.process_time()
    result = function(*args)
    return time.process_time() - start, result


def bench_encoding(n=50_000):
    print(f"== encoding {n:,} captions with OpenAI's vocabulary (one pass, empty cache at start; CPU seconds) ==")
    rng = random.Random(1)
    plain = captions(n)
    accented = [f"{text} {rng.choice(['café', 'naïve', 'jalapeño', '😀', 'crème brûlée', 'Zürich'])}"
                for text in plain]
    for name, corpus in [("ASCII captions", plain), ("captions with a non-ASCII word", accented)]:
        tokenizer, reference, rust = CLIPTokenizer(), load_open_clip(), rust_clip(CLIPTokenizer())
        minclip_s, ours = timed(lambda: [tokenizer.encode(t) for t in corpus])
        reference_s, theirs = timed(lambda: [reference.encode(t) for t in corpus])
        rust_s, rust_ids = timed(lambda: [e.ids for e in rust.encode_batch(corpus)])
        same = sum(a == b for a, b in zip(ours, theirs))
        tokens = sum(map(len, ours))
        print(f"{name}: {tokens:,} tokens, ids identical to open_clip for {same:,}/{n:,} captions "
              f"(Rust agrees on {sum(a == b for a, b in zip(ours, rust_ids)):,})")
        print(f"  minclip CLIPTokenizer      {minclip_s:7.2f} s  {n / minclip_s:9,.0f} captions/s")
        print(f"  open_clip SimpleTokenizer  {reference_s:7.2f} s  {n / reference_s:9,.0f} captions/s"
              f"   minclip is {reference_s / minclip_s:.1f}x faster")
        print(f"  HF tokenizers (Rust, 1 thread) {rust_s:5.2f} s  {n / rust_s:9,.0f} captions/s"
              f"   minclip/Rust = {minclip_s / rust_s:.1f}")


def bench_training(vocab_size=8000, chars=4_000_000):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    texts = stdlib_texts(chars, docstrings=False)
    print(f"\n== training a byte-level BPE of {vocab_size:,} ids on {sum(map(len, texts)) / 1e6:.1f} M "
          f"characters of the standard library's source (CPU seconds) ==")
    minclip_s, ours = timed(BPETokenizer.train, texts, vocab_size)
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex, as minclip's default
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf_s, _ = timed(hf.train_from_iterator, texts, trainer)
    ours_vocab = {printable(token) for token in ours.vocab}
    shared = len(ours_vocab & set(hf.get_vocab()))
    print(f"  minclip BPETokenizer.train      {minclip_s:6.2f} s")
    print(f"  HF tokenizers BpeTrainer (Rust) {hf_s:6.2f} s   ratio minclip/HF = {minclip_s / hf_s:.1f}")
    print(f"  vocabularies: {len(ours_vocab):,} and {hf.get_vocab_size():,} tokens, {shared:,} in common "
          f"(the tie rules differ)")
    short = [line for doc in stdlib_texts(400_000) for line in doc.split("\n") if len(line) > 30][:5000]
    small_s, clip = timed(CLIPTokenizer.train, short, 4000)
    print(f"  CLIPTokenizer.train on {len(short):,} short texts (docstring lines), "
          f"{clip.vocab_size:,} ids: {small_s:.2f} s")


if __name__ == "__main__":
    if find_openai_vocab() is None or importlib.util.find_spec("open_clip") is None:
        print("encoding benchmark skipped: needs open_clip_torch (pip install open_clip_torch --no-deps) and ftfy")
    else:
        bench_encoding()
    bench_training()
