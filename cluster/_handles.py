"""One way to call the run's helpers (the id registry, the progress counter): a Ray actor in the pipeline, a plain
object in this process when a small night embeds without Ray (``_inprocess``).

The stages (``prepare``, ``EncodeActor``) are the same code either way; only how they reach the registry and the
counter differs, and this is where.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["ask", "in_ray", "ray_running"]


def ask(handle: Any, method: str, *args: Any, timeout: float | None = None) -> Any:
    """``handle.method(*args)``: on a Ray actor handle, the remote call waited for (up to ``timeout`` seconds);
    on a plain object, the method called now."""
    fn = getattr(handle, method)
    remote = getattr(fn, "remote", None)
    if remote is None:
        return fn(*args)
    import ray

    return ray.get(remote(*args), timeout=timeout)


def in_ray() -> bool:
    """Whether this process is a Ray driver or worker (Ray initialised); never imports Ray to answer."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


#: the package's name for :func:`in_ray` (``cluster.ray_running``): whether this process holds a Ray session
ray_running = in_ray
