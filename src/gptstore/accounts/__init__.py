"""Accounts: users and organisations (each owns the namespace of its name), roles of
organisation members, API keys, passwords, and the audit log.

What a principal may read is decided in one place, `catalog/access.py`; this package
only says who the principal is (`AccountStore.authenticate`).
"""

from gptstore.accounts.store import AccountInfo, AccountStore, KeyInfo

__all__ = ["AccountInfo", "AccountStore", "KeyInfo"]
