"""Byte-level BPE: learn merges from any text, encode text to ids and back.

Byte-pair encoding (Sennrich et al. 2016; byte-level since GPT-2) in four ideas:

1. Text is a sequence of UTF-8 bytes, so 256 base tokens spell *any* string:
   no unknown token, ever, whatever the script, emoji or control character.
2. A regex first cuts text into "words" (pre-tokenization); merges never
   cross a word boundary, so " the" and "the." do not compete for tokens.
3. Training counts every adjacent pair of tokens over all words, merges the
   most frequent pair into one new token, and repeats until the vocabulary
   is as large as asked. The list of merges, in order, *is* the tokenizer.
4. Encoding a word starts from its bytes and applies the merges in the order
   they were learned; decoding concatenates the bytes of each token.

Ids: 0..255 are the bytes, then one id per merge in learning order (so a
merge's new id is also its rank), then the special tokens in the order they
were registered. ``clip.py`` reuses everything here with 512 base tokens
(each byte, and each byte ending a word) and OpenAI's text cleaning.
"""
import gzip
import heapq
import json
import warnings
from collections import Counter, defaultdict
from functools import lru_cache

import regex

# GPT-2's pre-tokenization: contractions, letter runs, digit runs, other-symbol
# runs (each may carry one leading space), and whitespace. Every character of
# any string falls in exactly one piece, so decode(encode(text)) == text.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

FILE_FORMAT = "#minclip-bpe v1"
HEADER_LINES = 5  # format, type, pattern, special tokens, number of merges


@lru_cache(maxsize=None)
def bytes_to_unicode():
    """Map each of the 256 byte values to a printable, non-space character.

    Vocabulary files store tokens as text, one merge ``left right`` per line,
    so every byte needs a visible character that is never a space or a
    newline. GPT-2 and CLIP use this table: the 188 bytes that are already
    printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``)
    map to themselves; the other 68 (space, control bytes, ...) map, in
    increasing order, to ``chr(256)``, ``chr(257)``, ... So the space byte 32
    becomes ``Ġ`` (chr(288)) and ``" the"`` is written ``Ġthe``.

    Returns a dict ``{byte: char}`` whose *insertion order* matters: the 188
    printable bytes first, then the 68 others. CLIP numbers its base tokens
    in exactly this order.

    Hint: build the list of printable byte values from the three ranges, map
    them to ``chr(b)``, then walk ``range(256)`` and give each missing byte
    the next character from 256 on.
    """
    # BEGIN EXERCISE 1.1: the byte-to-character table
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table
    # END EXERCISE


def count_pairs(words, counts):
    """How often each adjacent pair of ids occurs, over all words.

    ``words`` is a list of id lists, ``counts[i]`` how many times word ``i``
    occurs in the corpus. Overlapping pairs all count: ``[a, a, a]`` holds the
    pair ``(a, a)`` twice. Returns ``{(left, right): count}``.

    Hint: ``zip(word, word[1:])`` walks the adjacent pairs of one word.
    """
    # BEGIN EXERCISE 1.2: counting adjacent pairs
    pair_counts = defaultdict(int)
    for word, count in zip(words, counts):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
    return dict(pair_counts)
    # END EXERCISE


def merge(ids, pair, new_id):
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``.

    Scans left to right and never reuses an id: ``merge([a, a, a], (a, a), x)``
    is ``[x, a]``, not ``[x, x]``. Returns a new list.
    """
    # BEGIN EXERCISE 1.3: applying one merge
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged
    # END EXERCISE


def train_merges_simple(words, counts, num_merges, first_id, min_frequency=1):
    """Learn up to ``num_merges`` merges: the plain BPE loop, to read first.

    Each round counts every adjacent pair of every word (``count_pairs``),
    takes the most frequent one, merges it everywhere (``merge``) and starts
    again. That is the whole algorithm; ``train_merges`` is the same loop
    made fast, with identical results. Arguments, tie rule and result are
    those of ``train_merges``. O(corpus) per merge: fine for a few hundred
    merges of a small corpus, slow for a real vocabulary.
    """
    words = [list(word) for word in words]
    merges = []
    for new_id in range(first_id, first_id + num_merges):
        pair_counts = count_pairs(words, counts)                  # a full recount, every round
        if not pair_counts:
            break
        best = max(pair_counts, key=lambda pair: (pair_counts[pair], -pair[0], -pair[1]))
        if pair_counts[best] < min_frequency:
            break
        merges.append(best)
        words = [merge(word, best, new_id) for word in words]
    return merges


def train_merges(words, counts, num_merges, first_id, min_frequency=1):
    """Learn up to ``num_merges`` merges from words given as lists of ids.

    ``train_merges_simple`` recounts every pair of every word after each
    merge: O(corpus) per merge. This one counts once, then keeps the counts up to
    date: a merge of ``(a, b)`` only changes the words that contain it, so

    * ``where[pair]`` remembers which words contain each pair;
    * for each such word, the pairs of the old word lose its count and the
      pairs of the merged word gain it (most cancel out);
    * a max-heap of ``(-count, pair)`` finds the best pair. Entries are never
      updated in place; a changed count pushes a new entry, and a popped entry
      whose count is out of date is simply dropped ("lazy deletion").

    Tie rule (deterministic): the highest count wins; among equal counts the
    smallest pair ``(left, right)`` wins, comparing ``left`` first.

    Merge ``k`` creates id ``first_id + k``. Training stops early when no pair
    occurs ``min_frequency`` times. Returns the merges, a list of id pairs.

    Hint: start from ``count_pairs`` and a ``where`` index; pop the heap until
    an entry matches the current count; then update only ``where[pair]``.
    """
    # BEGIN EXERCISE 1.4: the incremental training loop
    words = [list(word) for word in words]
    pair_counts = count_pairs(words, counts)
    where = defaultdict(set)  # pair -> indices of the words that contain it
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap and len(merges) < num_merges:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -negative_count:
            continue  # stale entry: this pair's count changed after the push
        if -negative_count < min_frequency:
            break
        new_id = first_id + len(merges)
        merges.append(pair)
        change = defaultdict(int)
        for i in where.pop(pair):
            old, new = words[i], merge(words[i], pair, new_id)
            if len(new) == len(old):
                continue  # the word lost this pair to an earlier merge
            for p in zip(old, old[1:]):
                change[p] -= counts[i]
            for p in zip(new, new[1:]):
                change[p] += counts[i]
                if new_id in p:
                    where[p].add(i)
            words[i] = new
        for p, delta in change.items():
            if delta:
                count = pair_counts[p] = pair_counts.get(p, 0) + delta
                if count > 0:
                    heapq.heappush(heap, (-count, p))
                else:
                    del pair_counts[p]
    return merges
    # END EXERCISE


def printable(token):
    """A token's bytes spelled with ``bytes_to_unicode``: ``b" the"`` -> ``"Ġthe"``."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def utf8(word):
    """The UTF-8 bytes of ``word``, or a ValueError that says what is wrong."""
    try:
        return word.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"cannot tokenize {word!r}: the character {word[e.start]!r} at position "
            f"{e.start} is a lone surrogate, which has no UTF-8 encoding (replace it first, "
            f"e.g. text.encode('utf-8', 'replace').decode('utf-8'))"
        ) from None


class BPETokenizer:
    """A byte-level BPE tokenizer: ``train``, ``encode``, ``decode``, ``save``, ``load``.

    >>> tok = BPETokenizer.train(["the cat sat on the mat"] * 10, vocab_size=265)
    >>> tok.decode(tok.encode("the hat")) == "the hat"
    True

    ``merges`` is the list of id pairs in learning order, ``vocab[i]`` the
    bytes of token ``i``, ``special_tokens`` maps each special string (such as
    ``"<|endoftext|>"``) to its id. Special tokens found in the text encode to
    their own id.
    """

    cache_size = 100_000  # words remembered by encode; a bound keeps memory flat on endless streams

    def __init__(self, merges=(), special_tokens=(), pattern=GPT2_SPLIT_PATTERN):
        self.pattern = pattern
        self.splitter = regex.compile(pattern)
        self.vocab = self.base_vocab()
        self.merges = []
        self.pair_to_id = {}  # (left, right) -> id of the merged token; smaller id = learned earlier
        for left, right in merges:
            if not (0 <= left < len(self.vocab) and 0 <= right < len(self.vocab)):
                raise ValueError(f"merge {len(self.merges)} ({left}, {right}) uses an id "
                                 f"that does not exist yet (vocabulary has {len(self.vocab)})")
            self.merges.append((left, right))
            self.pair_to_id[left, right] = len(self.vocab)
            self.vocab.append(self.vocab[left] + self.vocab[right])
        self.special_tokens = {}
        self.cache = {}  # word (str) -> list of ids
        self.register_special_tokens(special_tokens)

    @staticmethod
    def base_vocab():
        """The tokens every vocabulary starts with: the 256 single bytes."""
        return [bytes([b]) for b in range(256)]

    @property
    def vocab_size(self):
        return len(self.vocab)

    def register_special_tokens(self, tokens):
        """Give each string in ``tokens`` the next free id, after all merges."""
        for token in tokens:
            if token in self.special_tokens:
                raise ValueError(f"special token {token!r} is already registered")
            self.special_tokens[token] = len(self.vocab)
            self.vocab.append(utf8(token))
            self.cache[token] = [self.special_tokens[token]]
        by_length = sorted(self.special_tokens, key=len, reverse=True)  # longest match first
        self.special_splitter = regex.compile("(" + "|".join(map(regex.escape, by_length)) + ")")

    def _special_id(self, token):
        if token not in self.special_tokens:
            raise ValueError(f"this tokenizer has no {token} token; register it with "
                             f"register_special_tokens([{token!r}]) or train with special_tokens")
        return self.special_tokens[token]

    @property
    def sot_token_id(self):
        return self._special_id("<|startoftext|>")

    @property
    def eot_token_id(self):
        return self._special_id("<|endoftext|>")

    # --- the text pipeline: clean -> pretokenize -> word_ids -> encode_word ---

    def clean(self, text):
        """Normalize text before splitting it (nothing here; CLIP lower-cases)."""
        return text

    def pretokenize(self, text):
        """Cut text into words: special tokens first, then the split pattern."""
        if not self.special_tokens:
            return self.splitter.findall(text)
        words = []
        for k, part in enumerate(self.special_splitter.split(text)):
            if k % 2:  # the capturing group puts the special tokens at odd positions
                words.append(part)
            else:
                words.extend(self.splitter.findall(part))
        return words

    def word_ids(self, word):
        """The base-token ids a word starts from: its UTF-8 bytes."""
        return list(utf8(word))

    def encode_word(self, ids):
        """Apply the learned merges to the base ids of one word.

        At each step, among the adjacent pairs that have a merge, merge the one
        learned earliest (smallest merged id) everywhere in the word; stop when
        no pair has a merge. This replays training's order on a single word.

        Hint: ``min(pairs, key=lambda p: self.pair_to_id.get(p, inf))``.
        """
        # BEGIN EXERCISE 1.5: encoding one word with the merges
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.pair_to_id.get(p, float("inf")))
            if pair not in self.pair_to_id:
                break
            ids = merge(ids, pair, self.pair_to_id[pair])
        return ids
        # END EXERCISE

    def encode(self, text):
        """Text -> list of token ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = []
        cache = self.cache
        for word in self.pretokenize(self.clean(text)):
            word_ids = cache.get(word)
            if word_ids is None:  # a dict hit skips the bytes and the merge loop
                word_ids = self.encode_word(self.word_ids(word))
                if len(cache) < self.cache_size:
                    cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def decode(self, ids):
        """Token ids -> text.

        Concatenate the bytes of the tokens, then decode UTF-8 once for the
        whole sequence: a character may be split across tokens (an emoji is 4
        bytes). Any id sequence decodes: invalid UTF-8 (say, half an emoji)
        becomes U+FFFD, the replacement character. An id outside the vocabulary
        raises a ValueError.
        """
        # BEGIN EXERCISE 1.6: decoding ids to text
        parts = []
        for i in ids:
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} is not in the vocabulary (ids 0..{len(self.vocab) - 1})")
            parts.append(self.vocab[i])
        return b"".join(parts).decode("utf-8", errors="replace")
        # END EXERCISE

    # --- training ---

    @classmethod
    def train(cls, texts, vocab_size, special_tokens=(), pattern=GPT2_SPLIT_PATTERN, min_frequency=1):
        """Learn a tokenizer of ``vocab_size`` ids from a text or an iterable of texts.

        ``vocab_size`` counts everything: the base tokens, the merges, and the
        special tokens, which take the last ids. Fewer merges are learned, with
        a warning, when no pair of tokens occurs ``min_frequency`` times.
        """
        num_base = len(cls.base_vocab())
        num_merges = vocab_size - num_base - len(special_tokens)
        if num_merges < 0:
            raise ValueError(f"vocab_size={vocab_size} is too small: the {num_base} base tokens and "
                             f"{len(special_tokens)} special tokens alone take {num_base + len(special_tokens)}")
        splitter = cls._from_parts([], special_tokens, pattern)
        return cls._from_parts(splitter.learn_merges(texts, num_merges, min_frequency), special_tokens, pattern)

    def learn_merges(self, texts, num_merges, min_frequency=1):
        """Learn ``num_merges`` merges over the base vocabulary with this tokenizer's text pipeline.

        Only ``clean``, ``pretokenize`` and ``word_ids`` are used (not the
        current merges). Words are counted once, then each distinct word takes
        part in training with its count as a weight.
        """
        word_counts = Counter()
        for text in [texts] if isinstance(texts, str) else texts:
            word_counts.update(self.pretokenize(self.clean(text)))
        for token in self.special_tokens:
            word_counts.pop(token, None)
        words = [self.word_ids(word) for word in word_counts]
        merges = train_merges(words, list(word_counts.values()), num_merges,
                              first_id=len(self.base_vocab()), min_frequency=min_frequency)
        if len(merges) < num_merges:
            warnings.warn(f"training stopped after {len(merges)} of {num_merges} merges: no pair of adjacent "
                          f"tokens occurs min_frequency={min_frequency} times or more (every word may already be "
                          f"a single token); train on more text for a larger vocabulary", stacklevel=3)
        return merges

    @classmethod
    def _from_parts(cls, merges, special_tokens, pattern):
        """Build a tokenizer of this class from what training or a file provides."""
        return cls(merges, special_tokens, pattern)

    # --- saving and loading ---

    def save(self, path):
        """Write the tokenizer to a text file that ``load`` reads back exactly.

        Format (UTF-8): five header lines with JSON values, then one merge per
        line in learning order. Special tokens take the ids after the merges,
        in the order listed::

            #minclip-bpe v1
            #type: "BPETokenizer"
            #pattern: "<the split regex>"
            #special_tokens: ["<|endoftext|>"]
            #merges: 3
            Ġ t
            h e
            Ġt he

        Tokens are written with ``bytes_to_unicode`` (the space byte is ``Ġ``),
        the notation of GPT-2's merges.txt and of CLIP's vocabulary file.
        """
        lines = [FILE_FORMAT,
                 f"#type: {json.dumps(type(self).__name__)}",
                 f"#pattern: {json.dumps(self.pattern)}",
                 f"#special_tokens: {json.dumps(list(self.special_tokens))}",
                 f"#merges: {len(self.merges)}"]
        for left, right in self.merges:
            lines.append(f"{printable(self.vocab[left])} {printable(self.vocab[right])}")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    @classmethod
    def load(cls, path):
        """Read a file written by ``save``; a damaged file raises a ValueError naming the line."""
        lines = read_lines(path)
        if len(lines) < HEADER_LINES:
            raise ValueError(f"{path}: the file ends at line {len(lines)}, inside the "
                             f"{HEADER_LINES}-line header (truncated?)")
        if lines[0] != FILE_FORMAT:
            raise ValueError(f"{path}, line 1: expected {FILE_FORMAT!r}, got {lines[0]!r} "
                             f"(not a file written by {cls.__name__}.save)")
        fields = {}
        expected = {"type": str, "pattern": str, "special_tokens": list, "merges": int}
        for n, (key, kind) in enumerate(expected.items(), start=2):
            line, prefix = lines[n - 1], f"#{key}: "
            try:
                fields[key] = json.loads(line[len(prefix):]) if line.startswith(prefix) else None
            except json.JSONDecodeError:
                fields[key] = None
            if not isinstance(fields[key], kind):
                raise ValueError(f"{path}, line {n}: expected '{prefix}<JSON {kind.__name__}>', got {line!r}")
        if fields["type"] != cls.__name__:
            raise ValueError(f"{path}, line 2: the file holds a {fields['type']}; "
                             f"read it with {fields['type']}.load")
        merge_lines = lines[HEADER_LINES:]
        if len(merge_lines) != fields["merges"]:
            raise ValueError(f"{path}: the header promises {fields['merges']} merges but the file "
                             f"has {len(merge_lines)} merge lines (truncated or edited?)")
        merges = parse_merges(merge_lines, cls.base_vocab(), path, first_line=HEADER_LINES + 1)
        return cls._from_parts(merges, fields["special_tokens"], fields["pattern"])


def read_lines(path):
    """The lines of a UTF-8 text file, gzipped or not, without the final newline."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        if data[:2] == b"\x1f\x8b":  # the gzip magic number
            data = gzip.decompress(data)
        text = data.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable UTF-8 (or gzipped UTF-8) text file: {e}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def parse_merges(lines, base_vocab, path, first_line):
    """Turn merge lines ``"left right"`` into id pairs on top of ``base_vocab``.

    Each line creates the next id. Errors name the file and line number.
    """
    byte_of = {char: b for b, char in bytes_to_unicode().items()}
    token_to_id = {token: i for i, token in enumerate(base_vocab)}
    merges = []
    for n, line in enumerate(lines, start=first_line):
        parts = line.split(" ")
        try:
            left, right = (token_to_id[bytes(byte_of[char] for char in part)] for part in parts)
        except (ValueError, KeyError):
            raise ValueError(f"{path}, line {n}: expected a merge 'left right' of two known tokens "
                             f"(written with bytes_to_unicode), got {line!r}") from None
        token = bytes(byte_of[char] for char in "".join(parts))
        if token in token_to_id:
            raise ValueError(f"{path}, line {n}: the merge {line!r} creates a token that already exists")
        token_to_id[token] = len(base_vocab) + len(merges)
        merges.append((left, right))
    return merges
