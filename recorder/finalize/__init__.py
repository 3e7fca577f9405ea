"""Finalizing: from a closed spool file to an encrypted, registered recording (the spool, WAV
checks, the per-recording work queue, the finalizer, reconciliation, imports of recordings a
PBX already holds). Uses ``recorder.store`` and ``recorder.vault``."""
