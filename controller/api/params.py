"""Request parameters the routers share: a database session per request, and list limits.

The session factory is the app's own (`app.state.sessions`, set by `create_app`), so two apps in
one process never share a database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session, sessionmaker


def _session(request: Request) -> Iterator[Session]:
    """A database session from the app's own factory, per request."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        yield session


Db = Annotated[Session, Depends(_session)]
Limit = Annotated[int, Query(ge=1, le=1000)]
