#!/usr/bin/env python3
"""Train the DGA model shipped in src/ztdns/data/dga-model.txt and print its quality on a held-out set.

Corpus (no downloads; everything is generated or kept in the repository):
- DGA names: arithmetic generators written from published descriptions of Conficker (date-seeded LCG, 4-10
  letters), CryptoLocker (xorshift on day/month/year, 12-24 letters), Necurs (seeded multiply-xorshift, 7-21
  letters), Ramnit (Park-Miller LCG, 8-19 letters), Gameover Zeus (MD5 of a date and index mapped to letters
  and digits, 20-28) and Qakbot-like (Mersenne Twister seeded by date, 8-25 letters). Training uses dates in
  2024, the held-out set dates in 2025, so no held-out name was generated from a training seed.
- Benign names, kept in the repository so that a run is deterministic anywhere (scripts/dga-corpus/):
  ``benign-domains.txt``, first labels of registered domains found in files of Debian packages
  (/usr/share/doc, /usr/share/common-licenses, Python packages' metadata) and in the Public Suffix List's
  private section (/usr/share/publicsuffix); ``words.txt``, words found five times or more in those files.
  ``--extract`` rewrites both from the packages installed here. Training adds documented synthetic names: those
  words alone, joined in pairs, with a hyphen or with a short number, and pronounceable consonant-vowel names.
Model: logistic regression (Adagrad, L2) over character 1-3-grams and length/digit tokens
(``ztdns.detect.dga.ngrams``); labels shorter than ``MIN_LENGTH`` score at most 0.5 (too short to tell from an
abbreviation such as "qq" or "nfkc"). Run: ``.venv/bin/python scripts/train_dga.py`` (about a minute); it prints
the held-out figures and recall and false positives at the default ``[detect.dga] threshold``.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import random
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ztdns.config.detect import DgaConfig
from ztdns.detect.dga import MODEL_FILE, DgaModel, ngrams

LETTERS = "abcdefghijklmnopqrstuvwxyz"
OUT = Path(__file__).resolve().parent.parent / "src" / "ztdns" / "data" / MODEL_FILE
CORPUS = Path(__file__).resolve().parent / "dga-corpus"
# Shorter labels score at most 0.5 (undecided): real ones ("qq", "xcb", "fqdn", "nfkc") look as random as a
# DGA's, and the families below seldom get caught that short anyway (Conficker's 4-5 letter names).
MIN_LENGTH = 6


# --- DGA families ---------------------------------------------------------------------------------------------


def conficker(date: datetime.date, count: int) -> list[str]:
    seed = date.toordinal() * 0x343FD
    names = []
    for _ in range(count):
        seed = (seed * 214013 + 2531011) & 0xFFFFFFFF
        length = 4 + (seed >> 16) % 7
        label = ""
        for _ in range(length):
            seed = (seed * 214013 + 2531011) & 0xFFFFFFFF
            label += LETTERS[(seed >> 16) % 26]
        names.append(label)
    return names


def cryptolocker(date: datetime.date, count: int) -> list[str]:
    day, month, year = date.day, date.month, date.year
    names = []
    for index in range(count):
        d, m, y = day + index, month, year
        label = ""
        length = 12 + (d * 7 + index) % 13
        for _ in range(length):
            d = ((d ^ (d << 13)) & 0xFFFFFFFF) >> 19 ^ ((d & 0xFFFFFFFE) << 12) & 0xFFFFFFFF
            m = ((m ^ (4 * m)) & 0xFFFFFFFF) >> 25 ^ (16 * (m & 0xFFFFFFF8)) & 0xFFFFFFFF
            y = ((y ^ (8 * y)) & 0xFFFFFFFF) >> 11 ^ ((y & 0xFFFFFFF0) << 17) & 0xFFFFFFFF
            label += LETTERS[(d ^ m ^ y) % 25]
        names.append(label)
    return names


def necurs(date: datetime.date, count: int) -> list[str]:
    names = []
    for index in range(count):
        n = (date.year * 10000 + date.month * 100 + date.day) * 0x7A69 + index * 0x1D9

        def step(value: int) -> int:
            value = (value * 0x41C64E6D + 0x3039) & 0xFFFFFFFFFFFFFFFF
            return value ^ (value >> 29)

        n = step(n)
        length = 7 + n % 15
        label = ""
        for _ in range(length):
            n = step(n)
            label += LETTERS[n % 25]
        names.append(label)
    return names


def ramnit(date: datetime.date, count: int) -> list[str]:
    seed = (date.toordinal() * 0x5DEECE66D) % 2147483647 or 1
    names = []
    for _ in range(count):
        seed = 16807 * (seed % 127773) - 2836 * (seed // 127773)
        seed %= 2147483647
        length = 8 + seed % 12
        label = ""
        for _ in range(length):
            seed = 16807 * (seed % 127773) - 2836 * (seed // 127773)
            seed %= 2147483647
            label += LETTERS[seed % 26]
        names.append(label)
    return names


def gameover(date: datetime.date, count: int) -> list[str]:
    alphabet = LETTERS + "0123456789"
    names = []
    for index in range(count):
        digest = hashlib.md5(f"{date.isoformat()}-{index}".encode(), usedforsecurity=False).digest()
        digest += hashlib.md5(digest, usedforsecurity=False).digest()
        length = 20 + digest[0] % 9
        names.append("".join(alphabet[byte % 36] for byte in digest[1 : 1 + length]))
    return names


def qakbot(date: datetime.date, count: int) -> list[str]:
    generator = random.Random(date.toordinal() * 31 + 7)
    return ["".join(generator.choice(LETTERS) for _ in range(generator.randint(8, 25))) for _ in range(count)]


FAMILIES = {
    "conficker": conficker,
    "cryptolocker": cryptolocker,
    "necurs": necurs,
    "ramnit": ramnit,
    "gameover": gameover,
    "qakbot": qakbot,
}


def dga_names(year: int, per_family: int, days: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for family, generate in FAMILIES.items():
        names: list[str] = []
        for offset in range(days):
            names += generate(datetime.date(year, 1, 1) + datetime.timedelta(days=offset * 7), per_family // days)
        out[family] = names
    return out


# --- benign names ---------------------------------------------------------------------------------------------

HOST = re.compile(
    rb"(?:[a-z0-9-]{1,63}\.)+(?:com|org|net|io|de|uk|fr|edu|gov|info|jp|nl|eu|ch|at|ca|au|it|se|no|"
    rb"fi|dk|cz|pl|be|es|us|me|co|dev|app|cc|tv|ru)\b"
)
WORD = re.compile(rb"\b[a-z]{3,10}\b")
SOURCES = ["/usr/share/doc", "/usr/share/common-licenses", "/usr/lib/python3/dist-packages"]


def disk_texts() -> list[bytes]:
    listing = subprocess.run(
        [
            "find",
            *SOURCES,
            "-type",
            "f",
            "(",
            "-name",
            "copyright",
            "-o",
            "-name",
            "README*",
            "-o",
            "-name",
            "METADATA",
            "-o",
            "-name",
            "*.txt",
            ")",
            "-size",
            "-200k",
        ],
        capture_output=True,
        check=False,
    ).stdout.split(b"\n")
    texts = []
    for path in sorted(listing)[:20000]:
        try:
            texts.append(Path(path.decode()).read_bytes().lower())
        except (OSError, UnicodeDecodeError):
            continue
    return texts


def extract_corpus(texts: list[bytes]) -> tuple[list[str], list[str]]:
    """(labels of real registered domains, words) from files on disk and the Public Suffix List."""
    from ztdns.detect.names import suffix_list

    psl = suffix_list()
    labels: set[str] = set()
    words: dict[str, int] = {}
    for text in texts:
        for host in HOST.findall(text):
            start = psl.registered(host)
            if start >= 0:
                labels.add(host[start:].split(b".")[0].decode())
        for word in WORD.findall(text):
            words[word.decode()] = words.get(word.decode(), 0) + 1
    private = Path("/usr/share/publicsuffix/public_suffix_list.dat").read_text(encoding="utf-8")
    private = private[private.find("===BEGIN PRIVATE DOMAINS===") :]
    for line in private.splitlines():
        if line and not line.startswith("//"):
            parts = line.lstrip("*.!").split(".")
            if len(parts) >= 2 and parts[-2].isascii():
                labels.add(parts[-2])
    common = sorted(word for word, count in words.items() if count >= 5)
    return sorted(label for label in labels if label), common


CORPUS_HEADER = {
    "benign-domains.txt": "# First labels of registered domains in Debian packages' files and the PSL's private part.",
    "words.txt": "# Words found five times or more in Debian packages' documentation and metadata files.",
}


def write_corpus() -> None:
    """``--extract``: the benign corpus from the Debian packages installed here, into scripts/dga-corpus/."""
    real, words = extract_corpus(disk_texts())
    for name, lines in (("benign-domains.txt", real), ("words.txt", words)):
        (CORPUS / name).write_text("\n".join([CORPUS_HEADER[name], *lines]) + "\n", encoding="ascii")


def benign_labels() -> tuple[list[str], list[str]]:
    """(labels of real registered domains, words) from the corpus in the repository."""

    def read(name: str) -> list[str]:
        text = (CORPUS / name).read_text(encoding="ascii")
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    return read("benign-domains.txt"), read("words.txt")


def synthetic(words: list[str], generator: random.Random, count: int) -> list[str]:
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    out = []
    for _ in range(count):
        kind = generator.random()
        if kind < 0.25:
            out.append(generator.choice(words))
        elif kind < 0.55:
            out.append(generator.choice(words) + generator.choice(words))
        elif kind < 0.65:
            out.append(generator.choice(words) + "-" + generator.choice(words))
        elif kind < 0.75:
            out.append(generator.choice(words) + str(generator.randint(1, 999)))
        else:
            syllables = generator.randint(2, 4)
            out.append("".join(generator.choice(consonants) + generator.choice(vowels) for _ in range(syllables)))
    return out


# --- training -------------------------------------------------------------------------------------------------


def train(samples: list[tuple[str, int]], epochs: int = 8, rate: float = 0.2, l2: float = 1e-6) -> DgaModel:
    weights: dict[str, float] = {}
    squares: dict[str, float] = {}
    bias, bias_square = 0.0, 1e-8
    generator = random.Random(1)
    features = [(ngrams(label), target) for label, target in samples]
    for _ in range(epochs):
        generator.shuffle(features)
        for grams, target in features:
            norm = 1 / math.sqrt(len(grams))
            z = bias + sum(weights.get(gram, 0.0) for gram in grams) * norm
            p = 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
            error = p - target
            bias_square += error * error
            bias -= rate * error / math.sqrt(bias_square)
            for gram in grams:
                gradient = error * norm + l2 * weights.get(gram, 0.0)
                square = squares.get(gram, 1e-8) + gradient * gradient
                squares[gram] = square
                weights[gram] = weights.get(gram, 0.0) - rate * gradient / math.sqrt(square)
    return DgaModel(bias, weights)


PRUNE = 0.5  # smaller weights change scores little and would make the file several times larger


def prune(model: DgaModel) -> DgaModel:
    return DgaModel(model.bias, {gram: w for gram, w in model.weights.items() if abs(w) >= PRUNE})


def auc(positives: list[float], negatives: list[float]) -> float:
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, rank = 0.0, 0
    index = 0
    while index < len(ranked):
        end = index
        while end < len(ranked) and ranked[end][0] == ranked[index][0]:
            end += 1
        average = (index + end + 1) / 2
        rank_sum += average * sum(label for _, label in ranked[index:end])
        rank += end - index
        index = end
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def recall_at(positives: list[float], negatives: list[float], fpr: float) -> tuple[float, float]:
    """(recall, threshold) at the lowest threshold whose false-positive rate is <= fpr."""
    ordered = sorted(negatives, reverse=True)
    allowed = int(len(ordered) * fpr)
    threshold = ordered[allowed] if allowed < len(ordered) else 0.0
    return sum(score > threshold for score in positives) / len(positives), threshold


def split_benign(real: list[str], words: list[str]) -> tuple[list[str], list[str]]:
    """(training, held-out) benign labels: halves of the real labels and of the words, each with its synthetics."""
    generator = random.Random(2026)
    real, words = list(real), list(words)
    generator.shuffle(real)
    generator.shuffle(words)
    half_real, half_words = len(real) // 2, len(words) // 2
    benign_train = real[:half_real] + synthetic(words[:half_words], generator, 15000)
    benign_test = real[half_real:] + synthetic(words[half_words:], random.Random(7), 5000)
    return benign_train, benign_test


def main() -> None:
    if sys.argv[1:] == ["--extract"]:
        write_corpus()
        return
    real, words = benign_labels()
    benign_train, benign_test = split_benign(real, words)
    dga_train = dga_names(2024, 3000, 30)
    dga_test = dga_names(2025, 800, 20)
    samples = [(label, 0) for label in benign_train] + [(n, 1) for names in dga_train.values() for n in names]
    # Evaluated as shipped: weights below PRUNE dropped, the rest quantised to 16 bits.
    trained = prune(train(samples))
    model = DgaModel.parse(DgaModel(trained.bias, trained.weights, MIN_LENGTH).dump(""))
    negatives = [model.score(label) for label in benign_test]
    positives = {family: [model.score(n) for n in names] for family, names in dga_test.items()}
    every = [score for scores in positives.values() for score in scores]
    recall, threshold = recall_at(every, negatives, 0.005)
    default = DgaConfig().threshold
    lines = [
        "DGA model for ztdns.detect.dga, written by scripts/train_dga.py (see its docstring for the corpus).",
        f"training: {len(benign_train)} benign labels ({len(real) // 2} from real domains, the rest synthetic), "
        f"{sum(len(v) for v in dga_train.values())} DGA labels of {len(FAMILIES)} families (2024 seeds)",
        f"held out: {len(benign_test)} benign, {len(every)} DGA (2025 seeds); labels under {MIN_LENGTH} "
        "characters score at most 0.5",
        f"held-out AUC {auc(every, negatives):.4f}; recall {recall:.3f} at <= 0.5 % FPR (score > {threshold:.3f})",
        f"at the default threshold {default}: recall {sum(s >= default for s in every) / len(every):.3f}, "
        f"false positives {sum(s >= default for s in negatives) / len(negatives):.4f} per benign name",
    ]
    for family, scores in positives.items():
        family_recall = sum(score >= default for score in scores) / len(scores)
        lines.append(f"  {family}: AUC {auc(scores, negatives):.4f}, recall {family_recall:.3f} at {default}")
    lines.append(f"{len(model.weights)} n-gram weights (|w| >= {PRUNE})")
    OUT.write_text(model.dump("\n".join(lines)), encoding="ascii")
    print("\n".join(lines))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
