"""A throwaway volume in the store under test, removed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kvol.repo import Repo
from kvol.store import Store, open_store


@contextmanager
def fresh_volume(store_url: str | None) -> Iterator[Repo]:
    if store_url is None:
        raise ValueError("this scenario runs against a store: give it a store URL")
    store = open_store(store_url)
    repo = Repo.create(store)
    try:
        yield repo
    finally:
        try:
            repo.destroy()
        finally:
            store.close()


def is_durable(store: Store) -> bool:
    """Does a commit to this store make its data durable (fsync/syncfs, or a remote store)?"""
    return bool(getattr(store, "durable", True))
