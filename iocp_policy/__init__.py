"""iocp-policy: an asyncio event loop built on a completion port.

io_uring on Linux, IOCP on Windows, and an emulated port everywhere else.

    import iocp_policy
    iocp_policy.run(main())
    asyncio.run(main(), loop_factory=iocp_policy.new_event_loop)   # 3.12+
"""

from __future__ import annotations

from ._loop import Loop
from ._policy import EventLoopPolicy, install, new_event_loop, run
from ._port import BackendUnavailableError

__all__ = ["BackendUnavailableError", "EventLoopPolicy", "Loop", "install", "new_event_loop", "run"]
__version__ = "0.1.0"
