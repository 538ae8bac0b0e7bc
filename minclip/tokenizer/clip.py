"""CLIP's tokenizer, id for id with OpenAI's, and ``tokenize`` for the text encoder.

OpenAI's pipeline (``clip/simple_tokenizer.py``), rebuilt on the BPE engine of
``bpe.py``:

1. clean: ``ftfy.fix_text`` (repairs mojibake such as ``cafÃ©``), HTML
   unescaping (twice), whitespace collapsed to single spaces, lower case;
2. split with ``CLIP_SPLIT_PATTERN``: contractions, letter runs, *single*
   digits, runs of other symbols; whitespace only separates words;
3. the last token of every word carries ``</w>``, so there are 512 base
   tokens: the 256 bytes, then the 256 bytes ending a word, both in
   ``bytes_to_unicode`` order (``!`` is id 0, ``!</w>`` id 256);
4. 48,894 merges, then ``<|startoftext|>`` = 49406 and ``<|endoftext|>`` =
   49407: 49,408 ids, end of text last (the text encoder pools there).

``tokenize`` turns texts into the ``(N, 77)`` int64 array the model reads:
start token, ids, end token, zeros.
"""
import html
import importlib.util
import os
from functools import lru_cache

import numpy as np

from minclip.tokenizer.bpe import BPETokenizer, bytes_to_unicode, parse_merges, read_lines, utf8

try:
    import ftfy
except ImportError:  # OpenAI's tokenizer requires ftfy; without it only mojibake repair is skipped
    ftfy = None

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_SPLIT_PATTERN = (r"""(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                      r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_NUM_MERGES = 49408 - 512 - 2  # 48,894: the file holds more, OpenAI uses these


def clean_text(text):
    """OpenAI's text cleaning: ftfy, HTML entities, whitespace, lower case.

    ``"  A &amp; B\\n"`` becomes ``"a & b"``. Whitespace is collapsed the way
    open_clip does it (``str.split``). Printable ASCII without ``&`` skips
    ftfy and ``html.unescape``: neither can change such text (no mojibake,
    control characters or entities are possible), and skipping them saves
    most of the cost of a typical caption.
    """
    if not (text.isascii() and text.isprintable() and "&" not in text):
        if ftfy is not None:
            text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def find_openai_vocab():
    """Path of OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` in an installed package, or None.

    open_clip (``pip install open_clip_torch``) and OpenAI's ``clip`` ship the
    file next to their code. ``importlib.util.find_spec`` locates a package
    without importing it (importing open_clip needs torch and torchvision).
    """
    for package in ("open_clip", "clip"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, OPENAI_VOCAB_FILE)
            if os.path.isfile(path):
                return path
    return None


def read_openai_merges(path):
    """The first 48,894 merges of OpenAI's vocabulary file, as id pairs."""
    lines = read_lines(path)[1:1 + OPENAI_NUM_MERGES]  # line 1 is a version header
    if len(lines) < OPENAI_NUM_MERGES:
        raise ValueError(f"{path}: {len(lines)} merge lines, but OpenAI's CLIP vocabulary has "
                         f"{OPENAI_NUM_MERGES:,} (truncated file?)")
    return parse_merges(lines, CLIPTokenizer.base_vocab(), path, first_line=2)


class CLIPTokenizer(BPETokenizer):
    """OpenAI's CLIP tokenizer, or one trained by minclip with the same recipe.

    ``CLIPTokenizer()`` reads OpenAI's vocabulary (``vocab_path``, by default
    the copy found by ``find_openai_vocab``) and gives exactly OpenAI's ids.
    ``CLIPTokenizer.train(captions, vocab_size=2000)`` learns a small one for a
    tiny CLIP; ``save``/``load`` keep it. Either way ``<|startoftext|>`` and
    ``<|endoftext|>`` are the last two ids.

    ``decode`` is OpenAI's: every ``</w>`` becomes a space, so
    ``decode(encode("A photo of a cat."))`` is ``"a photo of a cat . "``.
    """

    def __init__(self, vocab_path=None, merges=None):
        if merges is None:
            vocab_path = vocab_path or find_openai_vocab()
            if vocab_path is None:
                raise FileNotFoundError(
                    f"OpenAI's CLIP vocabulary {OPENAI_VOCAB_FILE} was not found: install open_clip "
                    f"(pip install open_clip_torch --no-deps ships it) or pass vocab_path=")
            merges = read_openai_merges(vocab_path)
        super().__init__(merges, [SOT, EOT], CLIP_SPLIT_PATTERN)
        position = {b: i for i, b in enumerate(bytes_to_unicode())}
        self.byte_ids = [position[b] for b in range(256)]  # byte -> base id; + 256 when it ends a word

    @staticmethod
    def base_vocab():
        """The 512 base tokens: each byte, then each byte followed by ``</w>``."""
        order = list(bytes_to_unicode())
        return [bytes([b]) for b in order] + [bytes([b]) + b"</w>" for b in order]

    def clean(self, text):
        return clean_text(text)

    def pretokenize(self, text):
        """OpenAI's split: one pattern, special tokens included (and whitespace dropped)."""
        return self.splitter.findall(text)

    def word_ids(self, word):
        """Base ids of a word: its bytes, the last one in its ``</w>`` form."""
        data = utf8(word)
        return [self.byte_ids[b] for b in data[:-1]] + [256 + self.byte_ids[data[-1]]]

    def decode(self, ids):
        return super().decode(ids).replace("</w>", " ")

    @classmethod
    def train(cls, texts, vocab_size, min_frequency=1):
        """Learn a CLIP-style tokenizer with ``vocab_size`` ids (at least 514).

        Same recipe as OpenAI's: CLIP cleaning and split, ``</w>`` word ends,
        512 base tokens, then the merges, then ``<|startoftext|>`` and
        ``<|endoftext|>`` as ids ``vocab_size - 2`` and ``vocab_size - 1``.
        """
        return super().train(texts, vocab_size, (SOT, EOT), CLIP_SPLIT_PATTERN, min_frequency)

    @classmethod
    def _from_parts(cls, merges, special_tokens, pattern):
        if list(special_tokens) != [SOT, EOT] or pattern != CLIP_SPLIT_PATTERN:
            raise ValueError(f"a CLIPTokenizer has CLIP's split pattern and special tokens {[SOT, EOT]}, "
                             f"got {pattern!r} and {list(special_tokens)}")
        return cls(merges=merges)


@lru_cache(maxsize=1)
def default_tokenizer():
    """OpenAI's CLIPTokenizer, read from disk once."""
    return CLIPTokenizer()


def pad_or_truncate(token_lists, context_length, eot_token_id):
    """Pack id lists into an ``(N, context_length)`` int64 array, zero-padded.

    A list longer than ``context_length`` keeps its first
    ``context_length - 1`` ids and ends with ``eot_token_id`` (open_clip's
    rule), because the text encoder reads its summary at the end token.

    Hint: ``np.zeros((N, context_length), dtype=np.int64)``, then fill row by row.
    """
    # BEGIN EXERCISE 1.7: padding and truncation
    rows = np.zeros((len(token_lists), context_length), dtype=np.int64)
    for i, ids in enumerate(token_lists):
        if len(ids) > context_length:
            ids = ids[:context_length - 1] + [eot_token_id]
        rows[i, :len(ids)] = ids
    return rows
    # END EXERCISE


def tokenize(texts, context_length=77, tokenizer=None, truncate=True):
    """Texts -> ``(N, context_length)`` int64 array: ``<|startoftext|>``, ids, ``<|endoftext|>``, zeros.

    ``texts`` is a str or a list of str. ``tokenizer=None`` uses OpenAI's
    vocabulary; any tokenizer with ``encode``, ``vocab_size``,
    ``sot_token_id`` and ``eot_token_id`` works, provided the end token is the
    largest id (the text encoder finds it with argmax). Too-long texts are cut
    so that the end token stays last (open_clip); ``truncate=False`` raises a
    ValueError instead (OpenAI).
    """
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    if eot != tokenizer.vocab_size - 1:
        raise ValueError(f"the end-of-text id must be the largest id ({tokenizer.vocab_size - 1}), got {eot}: "
                         f"the CLIP text encoder pools at argmax of the ids")
    if context_length < 2:
        raise ValueError(f"context_length must hold the start and end tokens (>= 2), got {context_length}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    token_lists = [[sot] + tokenizer.encode(text) + [eot] for text in texts]
    if not truncate:
        for text, ids in zip(texts, token_lists):
            if len(ids) > context_length:
                raise ValueError(f"text {text[:60]!r}{'...' if len(text) > 60 else ''} is {len(ids)} tokens "
                                 f"with start and end, more than context_length={context_length} "
                                 f"(shorten it, or tokenize(..., truncate=True))")
    return pad_or_truncate(token_lists, context_length, eot)
