from __future__ import annotations

import socket
import time

import pytest

from cluster import ClusterError
from cluster._connect import _probe


def test_an_address_nobody_listens_on_fails_fast_with_a_hint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ClusterError) as info:
        _probe(f"127.0.0.1:{port}", timeout=2.0)
    assert time.perf_counter() - t0 < 5
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in str(info.value)
    assert "ray start --head" in str(info.value)


def test_probe_accepts_a_listening_port_and_skips_non_tcp_forms():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        # a listening port passes (a closed one raises ClusterError, as above)
        assert _probe(f"127.0.0.1:{s.getsockname()[1]}", timeout=2.0) is None
        assert _probe(f"ray://127.0.0.1:{s.getsockname()[1]}", timeout=2.0) is None
    assert _probe("auto", timeout=0.1) is None  # nothing to probe: Ray resolves it
