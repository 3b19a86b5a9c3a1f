"""What a screen may ask of the app it runs in: the store it shows and the
clock that times its queries. :class:`~tunescope.tui.app.TunescopeApp` is
one; the screens are typed against this base so that they never import the
app module that opens them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from textual.app import App

if TYPE_CHECKING:
    from tunescope.ingest.store.database import Store


class StoreApp(App[None]):
    """An app over one store (declarations only: the subclass sets them)."""

    store: Store
    """The store the screens query, each worker on its own cursor."""
    clock: Callable[[], float]
    """The timer for query durations (tests pin it)."""
