"""The replication ledger: the engine is replication.ledger (bench/ imports it here)."""

from replication.ledger import CLAIMS_KEYS, LEDGER_KEYS, Ledger, ensure_table

__all__ = ["CLAIMS_KEYS", "LEDGER_KEYS", "Ledger", "ensure_table"]
