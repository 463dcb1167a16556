"""Two pipelines, one supervisor, one state directory: a ``journaled.App``.

``thumbs`` renders a generated grayscale image of the size it is given and
shrinks it by 2x2 averaging, one step per halving, until it fits 16 pixels
across (each step's payload is the image so far, so a crash or retry resumes
at the halving it was in). ``stats`` is a ``journaled.chain`` of three plain
functions: parse numbers, compute their statistics (a typed msgspec Struct
between the steps), format a line. Run it (from the repository root)::

    journaled submit --runner thumbs "128x96"
    journaled submit --runner stats "3 1 4 1 5 9 2 6"
    journaled submit "64x64"                 # no --runner: the default, thumbs
    journaled run examples.multi:app --until-idle
    journaled runs

``journaled submit --runner nope x`` is refused (exit 2) once a supervisor
has started on the directory: it lists the runners it serves in
``STATE/serving.json``. A run without ``--runner`` goes to the runner named
``default`` if the app has one, else to the first registered (here thumbs).
"""

from __future__ import annotations

import statistics

import msgspec

import journaled
from journaled import Continue, Step, StepError, Succeed

app = journaled.App()

MAX_SIDE = 16


class Image(msgspec.Struct, array_like=True):
    width: int
    height: int
    pixels: bytes  # row-major, one byte per pixel


def render(width: int, height: int) -> Image:
    """A diagonal gradient with a bright square in the middle: made here, at run time."""
    px = bytearray(width * height)
    for y in range(height):
        for x in range(width):
            v = (x * 255 // max(1, width - 1) + y * 255 // max(1, height - 1)) // 2
            if width // 3 <= x < 2 * width // 3 and height // 3 <= y < 2 * height // 3:
                v = 255
            px[y * width + x] = v
    return Image(width, height, bytes(px))


def halve(img: Image) -> Image:
    w, h = max(1, img.width // 2), max(1, img.height // 2)
    src, sw = img.pixels, img.width
    out = bytearray(w * h)
    for y in range(h):
        for x in range(w):
            i = 2 * y * sw + 2 * x
            out[y * w + x] = (src[i] + src[i + 1] + src[i + sw] + src[i + sw + 1]) // 4
    return Image(w, h, bytes(out))


@app.runner("thumbs")
def thumbs(step: Step) -> Continue | Succeed:
    if step.step_number == 0:
        try:
            w, h = (int(v) for v in step.payload.decode().lower().split("x"))
        except ValueError:
            raise StepError.permanent(f"input must be WIDTHxHEIGHT, got {step.payload!r}"
                                      ) from None
        if not (1 <= w <= 4096 and 1 <= h <= 4096):
            raise StepError.permanent("width and height must be 1..4096")
        img = render(w, h)
    else:
        img = halve(step.input(Image))
    if img.width > MAX_SIDE:
        return Continue(img)  # the next step halves it again
    mean = sum(img.pixels) / len(img.pixels)
    return Succeed(f"{img.width}x{img.height} mean={mean:.1f} after {step.step_number} "
                   "halvings".encode())


class Stats(msgspec.Struct):
    n: int
    mean: float
    stdev: float
    low: float
    high: float


def parse(data: bytes) -> list[float]:
    try:
        values = [float(v) for v in data.split()]
    except ValueError:
        raise StepError.permanent(f"input must be numbers, got {data[:40]!r}") from None
    if not values:
        raise StepError.permanent("no numbers given")
    return values


def describe(values: list[float]) -> Stats:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stats(len(values), statistics.fmean(values), sd, min(values), max(values))


def report(s: Stats) -> bytes:
    return (f"n={s.n} mean={s.mean:.3f} stdev={s.stdev:.3f} "
            f"range={s.low:g}..{s.high:g}").encode()


app.add("stats", journaled.chain(parse, describe, report))
