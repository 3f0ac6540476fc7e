"""``iocp_policy.Loop``: the scheduling core plus the I/O layers, assembled.

Each layer is a mixin with one job, stacked in this order (later layers use
earlier ones, never the other way round):

- ``_core.LoopCore``   ready queue, timers, run loop, executors, handlers
- ``_dns.DNSMixin``     getaddrinfo/getnameinfo, numeric shortcuts
- ``_sock.SockMixin``   ``sock_*`` coroutines on the completion port
- ``_net.NetMixin``     connections, servers, unix sockets, TLS, sendfile
- ``_datagram.DatagramMixin``  create_datagram_endpoint
- ``_readiness.ReadinessMixin``  add_reader/add_writer as poll completions
- ``_pipes.PipeMixin``  connect_read_pipe/connect_write_pipe
- ``_subprocess.SubprocessMixin``  subprocess_exec/_shell, exit via the port
- ``_signals.SignalMixin``  add/remove_signal_handler, the signal wakeup fd
"""

from __future__ import annotations

from ._datagram import DatagramMixin
from ._net import NetMixin
from ._readiness import ReadinessMixin
from ._signals import SignalMixin
from ._subprocess import SubprocessMixin


class Loop(SignalMixin, SubprocessMixin, ReadinessMixin, DatagramMixin, NetMixin):  # type: ignore[misc]
    """An asyncio event loop whose I/O core is a completion port.

    ``Loop(backend=None)``: ``backend`` forces ``"io_uring"``, ``"iocp"`` or
    ``"emulated"`` (default: ``$IOCP_POLICY_BACKEND``, else the native port of
    the platform with a logged fallback to the emulated one).
    """
