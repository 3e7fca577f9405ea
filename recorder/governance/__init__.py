"""Governance: retention and crypto-shredding, legal hold and deletion by a DPO, data-subject
requests (export, erase). Uses ``recorder.store`` and ``recorder.vault``."""
