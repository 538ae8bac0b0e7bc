"""Chapter 1: byte-level BPE (train, encode, decode, save) and CLIP's tokenizer."""
from minclip.tokenizer.bpe import BPETokenizer, bytes_to_unicode, count_pairs, merge, train_merges
from minclip.tokenizer.clip import CLIPTokenizer, find_openai_vocab, pad_or_truncate, tokenize
