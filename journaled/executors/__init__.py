"""Where steps run: the local process pool (default) or a Dask cluster.

Both present the same face to the supervisor (``journaled.pool.Pool``'s
methods: ``start``, ``wait_objects``, ``send``, ``read``, ``cancel``,
``stop``, ``kill``, ``reap``, ``respawn``, ``running_seq``, ``progress``,
``depth``, ``set_stopping``, ``death_reason``, ``close``), so the
supervisor, the journal and the write-ahead rule do not know which one
they drive.
"""

from __future__ import annotations

from typing import Any


def make_executor(spec: str, runner: Any, workers: int, preload: list[str] | None,
                  state_dir: Any = None, blob_threshold: int | None = None,
                  hygiene: Any = None) -> Any:
    """``local`` or ``dask://HOST:PORT``; ``ValueError`` names what is accepted.

    An executor object (``journaled.testing``'s inline one) is used as it is.
    """
    from ..pool import Pool

    if not isinstance(spec, str):
        return spec
    if spec in ("", "local"):
        return Pool(runner, workers, preload=preload, state_dir=state_dir,
                    blob_threshold=blob_threshold, hygiene=hygiene)
    if spec.startswith("dask://"):
        from .dask import DaskExecutor

        ex = DaskExecutor(spec[len("dask://"):], runner, workers)
        ex.state_dir = state_dir  # where blob refs in dispatches are read
        return ex
    raise ValueError(f"unknown executor {spec!r}: use 'local' or 'dask://HOST:PORT'")
