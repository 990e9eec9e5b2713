"""The store's own routes under /api."""
