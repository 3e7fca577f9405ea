"""The metadata store: tables and migrations, engine and transactions, what the adapters write
down about a call (``ledger``), the hash-chained audit log and phone-number protection. Uses
nothing else of ``recorder`` (the bottom room)."""
