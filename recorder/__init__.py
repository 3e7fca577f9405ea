"""What becomes of a call's audio and evidence, in five rooms, each allowed to use only those
before it in this list (tests/test_layout.py enforces it):

- ``store``: the metadata store (tables, migrations, transactions), the hash-chained audit
  log, phone-number protection; uses nothing else of ours.
- ``vault``: the encrypted recording format, the key epochs and the vault directory; uses
  ``store``.
- ``live``: calls in progress, shared by both PBX adapters (the call book, withdrawals,
  orphaned calls, the prompt catalog); uses ``store``.
- ``finalize``: from a closed spool file to an encrypted, registered recording (the spool,
  WAV checks, the work queue, reconciliation, imports); uses ``store`` and ``vault``.
- ``governance``: retention and crypto-shredding, legal hold and deletion, data-subject
  requests; uses ``store`` and ``vault``.

``metrics`` (Prometheus) is the one module every room may use. Nothing here imports a PBX
adapter, the web console or the application shell."""
