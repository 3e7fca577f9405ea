"""The realpbx harnesses' check that the PBX runs as its own account (issue 14, point 7),
tried on a listener of this test process: found through /proc, and refused when it is root."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from pbx_account import account_of, listener_pid, require_unprivileged


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_the_listener_of_a_port_is_found_with_its_account(listening: int) -> None:
    assert listener_pid(listening) == os.getpid()
    account = account_of(os.getpid())
    assert (account.uid, account.gid) == (os.geteuid(), os.getegid())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a listener running as root")
def test_a_pbx_running_as_root_fails_the_tests_with_the_fix(listening: int) -> None:
    with pytest.raises(pytest.fail.Exception, match="runs as root: run it as its own account"):
        require_unprivileged(listening, "asterisk")


def test_no_listener_is_a_clear_failure() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        pytest.fail.Exception, match=f"no process of this host listens on port {port}"
    ):
        require_unprivileged(port, "freeswitch")
