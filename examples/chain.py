"""A word-count pipeline from plain functions: ``journaled.chain(generate, count, top)``.

Step N runs function N with what function N-1 returned, so there is no
``step_number`` switch; the step number is journaled, so a retry or a crash
goes on at the function it was in, never from the top. The text is made at
run time from a seed (the input), the steps pass typed msgspec Structs
between them (their type hints say what to decode; a bad payload is a
permanent error naming the field), and the last one returns the result.
Run it (from the repository root)::

    journaled submit 7                 # the seed of the generated text
    journaled submit "7 2000"          # seed and number of words
    journaled run examples.chain:pipeline --until-idle
    journaled runs

With ``JOURNALED_EXAMPLE_FLAKY=1`` in the supervisor's environment,
``count`` fails its first attempt (a transient error): the retry runs
``count`` again and ``generate`` only once (``journaled status RUN`` shows it).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import msgspec

import journaled
from journaled import Step, StepError

VOCAB = ("the of and to in is it that was for on are as with his they at be this from "
         "have or by one had not but what all were when we there can an your which their "
         "said if do will each about how up out them then she many some so these would "
         "other into has more her two like him see time could no make than first been").split()


class Text(msgspec.Struct):
    seed: int
    words: list[str]


class Counts(msgspec.Struct):
    seed: int
    total: int
    counts: dict[str, int]


def generate(data: bytes) -> Text:
    """Made-up text (Zipf-ish word frequencies) from a seed: the same seed, the same text."""
    parts = data.split()
    try:
        seed = int(parts[0]) if parts else 0
        n = int(parts[1]) if len(parts) > 1 else 1000
    except ValueError:
        raise StepError.permanent(f"input must be 'SEED [WORDS]', got {data[:40]!r}") from None
    if not 1 <= n <= 1_000_000:
        raise StepError.permanent("WORDS must be 1..1000000")
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(VOCAB))]
    return Text(seed, rng.choices(VOCAB, weights, k=n))


def count(text: Text, step: Step) -> Counts:
    if os.environ.get("JOURNALED_EXAMPLE_FLAKY") == "1" and step.attempts == 1:
        raise StepError.transient("warming up; the retry runs count() again")
    return Counts(text.seed, len(text.words), dict(Counter(text.words)))


def top(c: Counts) -> bytes:
    best = sorted(c.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return (f"{c.total} words, {len(c.counts)} distinct; top: "
            + ", ".join(f"{w}={n}" for w, n in best)).encode()


pipeline = journaled.chain(generate, count, top)
