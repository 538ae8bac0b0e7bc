"""Chapter 1: the byte-level BPE tokenizer, and CLIP's, id for id.

Run one exercise with ``python -m pytest --exercise 1.3``. The comparisons
with open_clip's tokenizer (the reference) skip cleanly when torch, ftfy,
open_clip or OpenAI's vocabulary file is missing.
"""
import importlib.util
import itertools
import os
import random

import numpy as np
import pytest
import regex
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from minclip.tokenizer import (BPETokenizer, CLIPTokenizer, bytes_to_unicode, count_pairs,
                               find_openai_vocab, merge, pad_or_truncate, tokenize, train_merges)
from minclip.tokenizer.bpe import GPT2_SPLIT_PATTERN, train_merges_simple
from minclip.tokenizer.clip import CLIP_SPLIT_PATTERN, clean_text
from minclip.tokenizer.corpus import stdlib_texts

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
VOCAB = find_openai_vocab()
requires_vocab = pytest.mark.skipif(VOCAB is None, reason="OpenAI's vocabulary needs open_clip_torch installed")

TRICKY = ["", " ", "   \t\n ", "hello world", "Hello, World!!! 1234567890", "don't I'LL we've",
          "café naïve ﬁne", "e\u0301 a\u0308 (combining marks)", "日本語のテキスト", "안녕하세요 세계",
          "Привет, мир", "مرحبا بالعالم", "😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷", "tab\tnull\x00bell\x07esc\x1b[0m",
          "\r\n\u2028\u2029\x85", "\ufeffBOM \U0010FFFF \ue000", "a" * 300, "<|endoftext|> inside"]


def naive_bpe(words, counts, num_merges, first_id):
    """Plain BPE, the textbook loop: recount every pair, merge the best, repeat.

    Best = highest count, ties to the smallest (left, right) pair.
    """
    words = [list(word) for word in words]
    merges = []
    for new_id in range(first_id, first_id + num_merges):
        # counted another way than exercise 1.2: sort every (pair, count) occurrence, sum each run of equal pairs
        occurrences = sorted((pair, count) for word, count in zip(words, counts) for pair in zip(word, word[1:]))
        pair_counts = {pair: sum(count for _, count in run)
                       for pair, run in itertools.groupby(occurrences, key=lambda occurrence: occurrence[0])}
        if not pair_counts:
            break
        best = max(pair_counts, key=lambda pair: (pair_counts[pair], -pair[0], -pair[1]))
        merges.append(best)
        for w, word in enumerate(words):
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == list(best):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out
    return merges


def word_counts(texts, pattern=GPT2_SPLIT_PATTERN):
    """Distinct words of the texts (as byte lists) and their counts, split the plain way."""
    counts = {}
    for text in texts:
        for word in regex.findall(pattern, text):
            counts[word] = counts.get(word, 0) + 1
    return [list(w.encode("utf-8")) for w in counts], list(counts.values())


@pytest.fixture(scope="module")
def trained():
    """A small BPE trained on Python's own docstrings, with the two CLIP special tokens."""
    return BPETokenizer.train(stdlib_texts(100_000), vocab_size=600, special_tokens=[SOT, EOT])


@pytest.fixture(scope="module")
def clip():
    if VOCAB is None:
        pytest.skip("OpenAI's vocabulary needs open_clip_torch installed")
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    """open_clip's SimpleTokenizer, loaded from its single file (``import open_clip`` needs torchvision)."""
    pytest.importorskip("torch")
    pytest.importorskip("ftfy")
    spec = importlib.util.find_spec("open_clip")
    if spec is None or VOCAB is None:
        pytest.skip("open_clip_torch is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


# --- 1.1 bytes and their printable characters -------------------------------------------

@pytest.mark.exercise("1.1")
def test_byte_table_gives_every_byte_its_own_visible_character():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)), "bytes_to_unicode must have one entry per byte 0..255"
    chars = list(table.values())
    assert len(set(chars)) == 256, "two bytes share a character: decoding could not tell them apart"
    assert not any(c.isspace() for c in chars), "no byte may map to whitespace (files split merges on spaces)"
    assert table[ord("a")] == "a" and table[ord("~")] == "~", "printable bytes must map to themselves"
    assert table[ord(" ")] == "Ġ", f"the space byte should be chr(256 + 32) = 'Ġ', got {table[32]!r}"


@pytest.mark.exercise("1.1")
def test_byte_table_lists_printable_bytes_first():
    order = list(bytes_to_unicode())
    assert order[:3] == [33, 34, 35] and order[187] == 255, (
        f"CLIP numbers its base tokens in the table's insertion order: the 188 printable bytes "
        f"(33..126, 161..172, 174..255) first; got {order[:3]} ... {order[187]}")
    assert order[188:] == sorted(order[188:]), "the 68 other bytes follow in increasing order"


# --- 1.2 pair counting -------------------------------------------------------------------

@pytest.mark.exercise("1.2")
def test_count_pairs_weights_each_word_by_its_count():
    got = count_pairs([[1, 2, 3], [1, 2], [4, 4, 4], [5]], [2, 3, 1, 7])
    expected = {(1, 2): 5, (2, 3): 2, (4, 4): 2}
    assert got == expected, (f"expected {expected}, got {got}. (1, 2) is in a word seen twice and one "
                             f"seen 3 times: 5; [4, 4, 4] holds (4, 4) twice; [5] has no pair")


# --- 1.3 one merge -----------------------------------------------------------------------

@pytest.mark.exercise("1.3")
def test_merge_replaces_pairs_left_to_right():
    ids = [1, 2, 3, 1, 2]
    assert merge(ids, (1, 2), 9) == [9, 3, 9], "every occurrence of the pair becomes the new id"
    assert ids == [1, 2, 3, 1, 2], "merge must return a new list, not change its input"
    assert merge([4, 4, 4], (4, 4), 9) == [9, 4], "scan left to right; an id is used once: [4,4,4] -> [9,4]"
    assert merge([2, 1], (1, 2), 9) == [2, 1], "order matters: (1, 2) is not in [2, 1]"
    assert merge([], (1, 2), 9) == []


# --- 1.4 training ------------------------------------------------------------------------

CORPORA = {
    "english": ["the cat sat on the mat, the cat ate the rat"] * 3 + ["a theatre of cats"],
    "ties": ["ab cd ab cd ef"],
    "runs": ["aaaa aaa aa a bbbbbb abababab"],
    "unicode": ["日本語 日本 日本人 😀😀 café cafés"],
    "docstrings": stdlib_texts(20_000),
}


@pytest.mark.exercise("1.4")
@pytest.mark.filterwarnings("ignore:training stopped")
@pytest.mark.parametrize("name", CORPORA)
def test_training_matches_naive_bpe_merge_for_merge(name):
    texts = CORPORA[name]
    tokenizer = BPETokenizer.train(texts, vocab_size=256 + 60)
    words, counts = word_counts(texts)
    expected = naive_bpe(words, counts, 60, 256)
    for k, (got, want) in enumerate(zip(tokenizer.merges, expected)):
        assert got == want, (f"merge {k} on corpus {name!r}: expected {want}, got {got}. Check the tie "
                             f"rule (highest count, then smallest pair) and the incremental counts")
    assert len(tokenizer.merges) == len(expected), (
        f"expected {len(expected)} merges, got {len(tokenizer.merges)}: stop only when no pair is left")


@pytest.mark.parametrize("name", CORPORA)
def test_the_simple_training_loop_matches_naive_bpe(name):
    words, counts = word_counts(CORPORA[name])
    assert train_merges_simple(words, counts, 60, 256) == naive_bpe(words, counts, 60, 256)


@pytest.mark.exercise("1.4")
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 3), max_size=12), st.integers(1, 5)), max_size=20))
def test_incremental_training_equals_naive_training(weighted_words):
    words = [w for w, _ in weighted_words]
    counts = [c for _, c in weighted_words]
    got = train_merges(words, counts, num_merges=30, first_id=4)
    want = naive_bpe(words, counts, 30, 4)
    assert got == want, f"words {words}, counts {counts}: expected {want}, got {got}"


@pytest.mark.exercise("1.4")
def test_training_breaks_ties_by_smallest_pair():
    tokenizer = BPETokenizer.train("xy ab", vocab_size=257)
    assert tokenizer.merges == [(ord(" "), ord("a"))], (
        f"(' ', 'a'), ('a', 'b') and ('x', 'y') each occur once: the smallest pair wins, got "
        f"{tokenizer.merges}")


@pytest.mark.exercise("1.4")
def test_special_tokens_take_the_last_ids(trained):
    assert trained.vocab_size == 600
    assert (trained.sot_token_id, trained.eot_token_id) == (598, 599), (
        "special tokens are registered after the merges, so a CLIP-style tokenizer has "
        "<|endoftext|> as its largest id")
    assert trained.encode("hi<|endoftext|>") == trained.encode("hi") + [599]


def test_training_rejects_a_vocabulary_smaller_than_its_base():
    with pytest.raises(ValueError, match="too small"):
        BPETokenizer.train("abc", vocab_size=257, special_tokens=[SOT, EOT])


def test_training_warns_when_the_corpus_runs_out_of_pairs():
    with pytest.warns(UserWarning, match="stopped after 1 of 10 merges"):
        tokenizer = BPETokenizer.train("ab", vocab_size=266)
    assert tokenizer.vocab_size == 257


# --- 1.5 encoding ------------------------------------------------------------------------

@pytest.mark.exercise("1.5")
def test_encode_word_applies_merges_in_learning_order():
    a, b, c = ord("a"), ord("b"), ord("c")
    tokenizer = BPETokenizer(merges=[(b, c), (a, b), (a, 256)])  # bc=256, ab=257, abc=258
    assert tokenizer.encode_word([a, b, c]) == [258], (
        "(b, c) was learned before (a, b), so 'abc' -> [a, bc] -> [abc]; merging left to right "
        "instead gives [ab, c], which has no merge")
    assert tokenizer.encode_word([c, a, b, b]) == [c, 257, b]
    assert tokenizer.encode_word([a]) == [a]


@pytest.mark.exercise("1.5")
def test_encode_splits_words_then_caches_them(trained):
    text = "Tokenizers split text into words."
    words = trained.pretokenize(text)
    assert words[:3] == ["Tokenizers", " split", " text"], "GPT-2's pattern keeps a leading space on words"
    expected = [i for word in words for i in trained.encode_word(list(word.encode()))]
    assert trained.encode(text) == expected
    assert trained.cache[" split"] == trained.encode(" split"), "encode remembers each word it has seen"


@pytest.mark.exercise("1.5")
def test_encode_refuses_lone_surrogates_clearly(trained):
    with pytest.raises(ValueError, match="lone surrogate"):
        trained.encode("bad \ud800 text")
    with pytest.raises(TypeError, match="expects a str"):
        trained.encode(b"bytes")


# --- 1.6 decoding ------------------------------------------------------------------------

@pytest.mark.exercise("1.6")
def test_decode_joins_bytes_before_decoding_utf8():
    tokenizer = BPETokenizer()
    emoji = list("😀".encode())  # 4 bytes, 4 ids
    assert tokenizer.decode(emoji) == "😀", "decode the concatenated bytes, not token by token"
    assert tokenizer.decode(emoji[:2]) == "\ufffd", "half a character decodes to U+FFFD, never raises"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.decode([300])


@pytest.mark.exercise("1.6")
@pytest.mark.parametrize("text", TRICKY)
def test_decode_inverts_encode(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text, f"round trip of {text!r} failed via ids {ids}"


@pytest.mark.exercise("1.6")
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_on_any_text(trained, text):
    ids = trained.encode(text)
    assert all(0 <= i < trained.vocab_size for i in ids)
    assert trained.decode(ids) == text


# --- saving and loading ------------------------------------------------------------------

def test_save_then_load_gives_the_same_tokenizer(trained, tmp_path):
    path = tmp_path / "docs.bpe"
    trained.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == trained.merges and loaded.special_tokens == trained.special_tokens
    assert loaded.pattern == trained.pattern and loaded.vocab == trained.vocab
    text = "Save, load, encode: 3 steps 😀"
    assert loaded.encode(text) == trained.encode(text)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "#minclip-bpe v1" and lines[4] == f"#merges: {len(trained.merges)}"


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:-3], r"promises \d+ merges but the file has \d+"),
    (lambda lines: lines[:3], "inside the 5-line header"),
    (lambda lines: lines[:7] + ["Ġt"] + lines[8:], "line 8: expected a merge"),
    (lambda lines: lines[:7] + ["zzzz q"] + lines[8:], "line 8: expected a merge"),
    (lambda lines: ["#merges: 3"] + lines[1:], "line 1: expected '#minclip-bpe v1'"),
    (lambda lines: lines[:4] + ["#merges: many"] + lines[5:], "line 5: expected '#merges: <JSON int>'"),
])
def test_loading_a_damaged_file_names_the_file_and_line(trained, tmp_path, damage, message):
    path = tmp_path / "damaged.bpe"
    trained.save(path)
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    path.write_text("\n".join(damage(lines)) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        BPETokenizer.load(path)
    assert str(path) in str(error.value), "the error must name the file"


def test_loading_a_missing_or_binary_file_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.bpe"):
        BPETokenizer.load(tmp_path / "nowhere.bpe")
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match="broken.gz: not a readable"):
        BPETokenizer.load(broken)


# --- CLIP: OpenAI's ids --------------------------------------------------------------------

def clip_corpus():
    """Varied texts for the id-for-id comparison with open_clip."""
    rng = random.Random(0)
    subjects = ["a dog", "Two cats", "the MAN", "A young woman", "an old red car", "children", "a pizza"]
    actions = ["sitting on", "running across", "looking at", "parked next to", "eating", "under"]
    places = ["a wooden bench", "the beach", "a busy street", "the kitchen table", "snow-covered hills"]
    captions = [f"{rng.choice(subjects)} {rng.choice(actions)} {rng.choice(places)}{rng.choice('.!?,;')}"
                for _ in range(300)]
    special = [
        "Wait... what?!?", "--->  <---", "(((nested)))", "#hashtag @user", "C++ & C#", "e.g., i.e.; etc.",
        "'single' \"double\" `back`", "!!!???...", "1234567890", "3.14159", "1,000,000", "2024-01-05",
        "4x4 10:30pm", "١٢٣ ௫ Ⅻ ½ ²", "don't", "I'M", "we've they'll she'd it's", "rock'n'roll O'Neil",
        "don’t", "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&quot;hi&quot; &#39;x&#39;", "&#x1F600; &amp;amp;",
        "fish &amp chips &nbsp;here", "Привет мир", "你好，世界", "こんにちは", "안녕하세요", "مرحبا بالعالم",
        "שלום", "नमस्ते", "ελληνικά", "Ünïcödé straße", "ﬁne ＦＵＬＬＷＩＤＴＨ", "😀", "👍🏽", "👨‍👩‍👧‍👦",
        "🇫🇷 ❤️", "a😀b", "pneumonoultramicroscopicsilicovolcanoconiosis", "a" * 200, "ab" * 100,
        "", " ", "\t\n", "   \u3000  ", "\u00a0", "tab\there", "null\x00byte", "\x1b[31mred\x1b[0m",
        "line\r\nbreak", "zero\u200bwidth", "combining e\u0301", "mojibake cafÃ©", "BOM\ufeff", "İstanbul",
        "ǅ ß ﬀ", "x\u0345y", "<b>html</b> &amp;", "Mixed 123abc456 ab12cd", "UPPER lower MiXeD",
    ]
    alphabet = [chr(c) for c in range(32, 0x3000) if not 0xD800 <= c < 0xE000] + ["😀", "\U0001F3FD", " "]
    noise = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    return captions + special + noise + stdlib_texts(60_000)


@requires_vocab
def test_openai_vocabulary_size_and_special_ids(clip):
    assert clip.vocab_size == 49408, "512 base tokens + 48,894 merges + 2 special tokens"
    assert (clip.sot_token_id, clip.eot_token_id) == (49406, 49407)
    assert clip.decode([clip.sot_token_id]) == SOT


@requires_vocab
@pytest.mark.exercise("1.5")
def test_a_photo_of_a_cat_gets_openais_ids(clip):
    ids = tokenize("a photo of a cat.")[0]
    expected = [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert ids[:8].tolist() == expected and not ids[8:].any(), (
        f"expected {expected} then zeros, got {ids[:10].tolist()}. 'a</w>' is 320: check the </w> "
        f"word ends and the 512 base tokens in bytes_to_unicode order")


@requires_vocab
@pytest.mark.exercise("1.5")
def test_every_digit_is_its_own_token(clip):
    ids = clip.encode("2024")
    assert [clip.decode([i]) for i in ids] == ["2 ", "0 ", "2 ", "4 "], (
        "CLIP's split pattern takes \\p{N} one digit at a time")


@requires_vocab
def test_special_token_strings_in_text_become_special_ids(clip):
    assert clip.encode("a <|endoftext|> b")[1] == 49407, "OpenAI's pattern matches special tokens first"


@pytest.mark.exercise("1.5")
def test_clip_ids_match_open_clip_on_a_varied_corpus(clip, open_clip_tokenizer):
    mismatches = [(text, clip.encode(text), open_clip_tokenizer.encode(text)) for text in clip_corpus()
                  if clip.encode(text) != open_clip_tokenizer.encode(text)]
    assert not mismatches, (f"{len(mismatches)} texts differ from open_clip; first: {mismatches[0][0]!r}: "
                            f"minclip {mismatches[0][1][:12]}, open_clip {mismatches[0][2][:12]}")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_clip_ids_and_decoding_match_open_clip_on_any_text(clip, open_clip_tokenizer, text):
    # the one known difference: open_clip names its special tokens <start_of_text> and
    # <end_of_text>, OpenAI (and minclip) <|startoftext|> and <|endoftext|>
    assume(not any(name in clean_text(text) for name in (SOT, EOT, "<start_of_text>", "<end_of_text>")))
    ids = clip.encode(text)
    assert ids == open_clip_tokenizer.encode(text)
    assert clip.decode(ids) == open_clip_tokenizer.decode(ids)


@requires_vocab
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
@example("Í\x85")
def test_clip_decode_gives_back_the_cleaned_text(clip, text):
    # OpenAI's split pattern is case-insensitive, and a few marks that case-fold to a letter
    # (U+0345, which ftfy makes of 'Í\x85') match none of its alternatives: OpenAI drops them,
    # and so does minclip (the ids equal open_clip's). Everything the pattern keeps comes back.
    kept = "".join(regex.findall(CLIP_SPLIT_PATTERN, clean_text(text)))
    decoded = clip.decode(clip.encode(text))
    assert decoded.replace(" ", "") == kept.replace(" ", ""), (
        "CLIP decodes every word end </w> as a space; apart from spaces, the cleaned text comes back")


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(min_codepoint=32, max_codepoint=126)).filter(lambda s: "&" not in s))
def test_clean_text_shortcut_agrees_with_ftfy(text):
    ftfy = pytest.importorskip("ftfy")
    import html
    full = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
    assert clean_text(text) == full, "printable ASCII without '&' must be left alone by ftfy and html"


def test_missing_vocabulary_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr("minclip.tokenizer.clip.find_openai_vocab", lambda: None)
    with pytest.raises(FileNotFoundError, match="open_clip_torch"):
        CLIPTokenizer()
    with pytest.raises(FileNotFoundError, match="absent.txt.gz"):
        CLIPTokenizer(tmp_path / "absent.txt.gz")


# --- training a small CLIP tokenizer ------------------------------------------------------

CAPTIONS = [f"a {color} {thing} on the {place}." for color in ("red", "green", "blue", "black", "white")
            for thing in ("square", "circle", "triangle", "cat", "dog", "car")
            for place in ("left", "right", "table", "grass")]


@pytest.mark.exercise("1.4")
def test_clip_training_uses_word_ends_and_matches_naive_bpe():
    with pytest.warns(UserWarning, match="stopped after"):  # 120 captions run out of pairs seen twice
        tokenizer = CLIPTokenizer.train(CAPTIONS, vocab_size=600, min_frequency=2)
    words = {}
    for text in CAPTIONS:
        for word in tokenizer.pretokenize(clean_text(text)):
            words[word] = words.get(word, 0) + 1
    expected = naive_bpe([tokenizer.word_ids(w) for w in words], list(words.values()), 86, 512)
    assert tokenizer.merges == expected[:len(tokenizer.merges)], "CLIP training must be the same BPE"
    assert tokenizer.decode(tokenizer.encode("A red cat")) == "a red cat ", "</w> decodes to a space"
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id) == (tokenizer.vocab_size - 2, tokenizer.vocab_size - 1)


def test_trained_clip_tokenizer_saves_loads_and_tokenizes(tmp_path):
    with pytest.warns(UserWarning, match="stopped after"):
        tokenizer = CLIPTokenizer.train(CAPTIONS, vocab_size=2000)
    path = tmp_path / "captions.bpe"
    tokenizer.save(path)
    loaded = CLIPTokenizer.load(path)
    assert loaded.merges == tokenizer.merges and loaded.vocab_size == tokenizer.vocab_size
    rows = tokenize(CAPTIONS[:3], context_length=12, tokenizer=loaded)
    assert rows.shape == (3, 12) and rows.dtype == np.int64
    assert rows[0, 0] == loaded.sot_token_id and loaded.eot_token_id in rows[0]
    assert rows.max() == loaded.vocab_size - 1, "argmax of a row must find <|endoftext|>"
    with pytest.raises(ValueError, match="holds a CLIPTokenizer"):
        BPETokenizer.load(path)


# --- 1.7 padding and truncation ------------------------------------------------------------

class WordCounter:
    """A stand-in tokenizer: one id per word, so that 1.7 needs no other exercise."""
    vocab_size, sot_token_id, eot_token_id = 10, 8, 9

    def encode(self, text):
        return [1] * len(text.split())


@pytest.mark.exercise("1.7")
def test_pad_or_truncate_pads_with_zeros_and_keeps_eot_last():
    rows = pad_or_truncate([[8, 1, 2, 9], [8, 1, 2, 3, 4, 5, 9], [8, 9]], context_length=5, eot_token_id=9)
    expected = [[8, 1, 2, 9, 0], [8, 1, 2, 3, 9], [8, 9, 0, 0, 0]]
    assert rows.tolist() == expected, (f"expected {expected}, got {rows.tolist()}: pad with zeros; a "
                                       f"too-long row keeps its first 4 ids, then the end token 9")
    assert rows.dtype == np.int64 and rows.shape == (3, 5)


@pytest.mark.exercise("1.7")
def test_tokenize_takes_a_string_or_a_list():
    one = tokenize("three small words", context_length=6, tokenizer=WordCounter())
    assert one.tolist() == [[8, 1, 1, 1, 9, 0]], "a str is one row: start, ids, end, zeros"
    many = tokenize(["", "one two three four five six"], context_length=6, tokenizer=WordCounter())
    assert many.tolist() == [[8, 9, 0, 0, 0, 0], [8, 1, 1, 1, 1, 9]]


def test_tokenize_without_truncation_names_the_long_text():
    with pytest.raises(ValueError, match="'one two three four five six' is 8 tokens"):
        tokenize(["fine", "one two three four five six"], context_length=6, tokenizer=WordCounter(),
                 truncate=False)


def test_tokenize_requires_the_end_token_to_be_the_largest_id(trained):
    bad = BPETokenizer.train("x", vocab_size=258, special_tokens=[EOT, SOT])
    with pytest.raises(ValueError, match="largest id"):
        tokenize("x", tokenizer=bad)
    assert tokenize("the end", tokenizer=trained).shape == (1, 77)
