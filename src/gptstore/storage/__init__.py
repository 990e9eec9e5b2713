"""Bytes and rows: the blob store, manifests and the database engine. No domain logic."""
