"""A numpy pipeline passing multi-MB arrays between steps, zero-copy on the way in.

Each step's payload is a raw C-order array (``shape`` and ``dtype`` in the
headers). A 2000 x 2000 float64 array is 32 MB: far over the blob threshold
(64 KiB), so it never enters the journal or the supervisor. The worker that
returns it writes it once to ``STATE/blobs/ab/<sha256>`` and the journal
records only ``(sha256, size)``; the next step maps that file with
``step.payload_view()`` and ``numpy.frombuffer`` reads it in place, with no
copy into the worker's heap. The steps::

    0  standardise        (x - mean) / std
    1  squash             tanh(x)
    2  running sum        cumsum along each row
    3  centre columns     x - column means   -> the result (32 MB, a blob too)

Returning ``Continue(memoryview(array))`` hands the array's own buffer to
the blob writer (any C-contiguous bytes-like works; no ``tobytes()`` copy).

Run it (from the repository root; needs ``pip install 'journaled[arrays]'``)::

    python -m examples.arrays make --n 2000 --out /tmp/a.bin
    journaled submit --input-file /tmp/a.bin -H shape=2000,2000 -H dtype=float64
    journaled run examples.arrays:runner --until-idle
    journaled result RUN_ID --out /tmp/result.bin      # streamed from its blob
    python -m examples.arrays check /tmp/a.bin /tmp/result.bin --n 2000
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from journaled import Continue, Step, Succeed

STEPS = 4


def _array(step: Step) -> Any:
    shape = tuple(int(x) for x in step.headers.get("shape", "2000,2000").split(","))
    dtype = np.dtype(step.headers.get("dtype", "float64"))
    # Zero-copy: a read-only array over the blob's mmap (or the inline bytes).
    return np.frombuffer(step.payload_view(), dtype=dtype).reshape(shape)


def transform(k: int, x: Any) -> Any:
    """Step ``k`` of the pipeline; the same function checks the result in ``check``."""
    if k == 0:
        return (x - x.mean()) / (x.std() or 1.0)
    if k == 1:
        return np.tanh(x)
    if k == 2:
        return np.cumsum(x, axis=1)
    return x - x.mean(axis=0, keepdims=True)


def runner(step: Step) -> Continue | Succeed:
    out = np.ascontiguousarray(transform(step.step_number, _array(step)))
    if step.step_number + 1 < STEPS:
        return Continue(memoryview(out))  # type: ignore[arg-type]  # any bytes-like
    return Succeed(memoryview(out))  # type: ignore[arg-type]


def reference(x: Any) -> Any:
    """The whole pipeline in this process, for checking a result."""
    for k in range(STEPS):
        x = transform(k, x)
    return x


def make_input(n: int, seed: int = 0) -> Any:
    return np.random.default_rng(seed).standard_normal((n, n)) * 3.0 + 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="make an input or check a result")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write an n x n float64 input array")
    mk.add_argument("--n", type=int, default=2000)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--out", required=True)
    ck = sub.add_parser("check", help="compare a result with the pipeline run here")
    ck.add_argument("input")
    ck.add_argument("result")
    ck.add_argument("--n", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.cmd == "make":
        make_input(args.n, args.seed).tofile(args.out)
        return 0
    x = np.fromfile(args.input, dtype=np.float64).reshape(args.n, args.n)
    got = np.fromfile(args.result, dtype=np.float64).reshape(args.n, args.n)
    ok = np.allclose(got, reference(x))
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
