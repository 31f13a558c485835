"""The HTTP connection protocol ``twentyq serve`` runs uvicorn with: h11 plus a header-read deadline.

uvicorn times out idle keep-alive connections, but not a request whose headers are still arriving:
one byte is enough to cancel its keep-alive timer, and a client sending headers a byte at a time (or
never finishing them) held the connection for ever (issue 27: 3,000 half-open connections stayed
open). :class:`HeaderTimeoutH11Protocol` gives every request ``read_timeout`` seconds from the moment
the connection is ready for it (accepted, or the previous answer sent) to its last header line, and
closes the connection otherwise. The body's deadline is the app's (``_Guard``, 408), and the header
size is capped by h11 (``h11_max_incomplete_event_size``, set from ``uvicorn_options``).
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024  # request line and headers together; h11's default, stated


def header_timeout_protocol(read_timeout: float) -> type:
    """An H11Protocol class whose requests must send all their headers within ``read_timeout`` seconds."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            if not self.transport.is_closing():
                self._header_deadline = self.loop.call_later(read_timeout, self._header_deadline_passed)

        def _disarm_header_deadline(self) -> None:
            handle = getattr(self, "_header_deadline", None)
            if handle is not None:
                handle.cancel()
                self._header_deadline = None

        def _header_deadline_passed(self) -> None:
            self._header_deadline = None
            # their_state is IDLE until h11 has parsed a whole request line and headers
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol


def uvicorn_options(read_timeout: float) -> dict[str, Any]:
    """The uvicorn.Config settings for reading requests: the protocol above, the header size cap and the
    keep-alive timeout (an idle connection is closed after 5 s, uvicorn's default, stated)."""
    return {"http": header_timeout_protocol(read_timeout), "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "timeout_keep_alive": 5}
