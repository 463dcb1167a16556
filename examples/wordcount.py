"""Map-reduce word counts: one child run per chunk of text, reduced in the parent's next step.

The text is made at run time (``generate``: seeded, Zipf-like word
frequencies over a fixed vocabulary, so every run of the same input makes
the same text). The parent's step 0 cuts it into ``CHUNKS`` chunks and
returns ``Spawn``: one child per chunk (the map), each counting its words.
The parent holds no worker while they run; its step 1 gets
``step.children`` and merges their counts (the reduce), then succeeds
with JSON: the total, the distinct words and the ten most common.

Input: ``CHUNKS WORDS_PER_CHUNK SEED`` (defaults 200 2000 7). Run it (from
the repository root)::

    journaled submit "200 2000 7" --run-id wc
    journaled run examples.wordcount:runner --until-idle
    journaled result wc

or in one process, with an embedded ``Runtime``::

    python -m examples.wordcount 200 2000 7
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from typing import Any

from journaled import Fail, Spawn, Step, Succeed

DEFAULTS = (200, 2000, 7)
VOCABULARY = [w for w in (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their has been if more when "
    "will would who so no out up into do any time about than only other new some could "
    "these two may first then such like over our even most after also made many must "
    "before through back years where much your way well down should because each just "
    "those people how too little state good very make world still see own men work long "
    "here get both between life being under never day same another know while last might "
    "great old year off come since against go came right used take three").split()]


def parse(data: bytes) -> tuple[int, int, int]:
    """``CHUNKS WORDS_PER_CHUNK SEED`` from the input (defaults for missing words)."""
    words = data.split()
    vals = [int(w) for w in words[:3]] + list(DEFAULTS[len(words[:3]):])
    chunks, per, seed = vals
    if not 1 <= chunks <= 10_000 or not 0 <= per <= 1_000_000:
        raise ValueError(f"need 1 <= CHUNKS <= 10000 and 0 <= WORDS_PER_CHUNK <= 1000000, "
                         f"got {chunks} {per}")
    return chunks, per, seed


def generate(chunks: int, per: int, seed: int) -> list[str]:
    """The text, as ``chunks`` chunks of ``per`` words each (Zipf-like: rank r has weight 1/r)."""
    rng = random.Random(seed)
    weights = [1.0 / (r + 1) for r in range(len(VOCABULARY))]
    out = []
    for _ in range(chunks):
        words = rng.choices(VOCABULARY, weights, k=per)
        # Some lines, some capitals and punctuation, so counting has to normalise.
        line = []
        for n, w in enumerate(words):
            if n % 17 == 0:
                w = w.capitalize()
            line.append(w + ("." if n % 11 == 10 else ""))
        out.append("\n".join(" ".join(line[i:i + 12]) for i in range(0, len(line), 12)))
    return out


def count_words(text: str) -> Counter[str]:
    """The map: lower-cased words, punctuation stripped."""
    return Counter(w.strip(".,;:!?").lower() for w in text.split() if w.strip(".,;:!?"))


def reduce_counts(counts: list[dict[str, int]]) -> dict[str, Any]:
    """The reduce: one Counter of every chunk's counts, summarised."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return {"words": sum(total.values()), "distinct": len(total),
            "top": total.most_common(10)}


def runner(step: Step) -> Any:
    if step.headers.get("role") == "map":
        return Succeed(json.dumps(count_words(step.payload.decode())).encode())
    if step.step_number == 0:
        try:
            chunks, per, seed = parse(step.payload)
        except ValueError as e:
            return Fail(f"input must be 'CHUNKS WORDS_PER_CHUNK SEED': {e}")
        text = generate(chunks, per, seed)
        return Spawn([t.encode() for t in text], then=b"", headers={"role": "map"})
    assert step.children is not None
    failed = [c.run_id for c in step.children if c.status.value != "succeeded"]
    if failed:
        return Fail(f"{len(failed)} map runs did not succeed, e.g. {failed[0]}")
    step.progress(0, len(step.children), "reducing")
    return Succeed(json.dumps(reduce_counts(
        [json.loads(c.result or b"{}") for c in step.children])).encode())


def main(argv: list[str]) -> None:
    import tempfile

    from journaled import Runtime

    with tempfile.TemporaryDirectory() as state, Runtime(state, runner, workers=2) as rt:
        rid = rt.submit(" ".join(argv).encode(), run_id="wordcount")
        out = rt.wait(rid, timeout=600)
        if out.status.value != "succeeded":
            sys.exit(f"wordcount {out.status.value}: {out.error}")
        res = json.loads(out.result or b"{}")
        print(f"{res['words']:,} words, {res['distinct']} distinct; most common:")
        for word, n in res["top"]:
            print(f"  {word:<8} {n:>8,}")


if __name__ == "__main__":
    main(sys.argv[1:])
