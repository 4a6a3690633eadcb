"""curvfast.distributed under failure: a closed connection is reported as such, not as a timeout."""
from __future__ import annotations


def test_a_closed_connection_is_not_reported_as_a_timeout():
    from curvfast.distributed import Context

    ctx = Context(rank=1, world_size=2, timeout=1800.0)
    closed = str(ctx._failed("gathering scores", RuntimeError("Connection closed by peer [127.0.0.1]:29500")))
    assert "closed the connection" in closed and "timed out" not in closed
    assert "timed out after 1800 s" in str(ctx._failed("gathering scores", RuntimeError("Socket Timeout")))
