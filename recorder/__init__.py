"""Everything after audio exists: the metadata store, the audit log, phone-number protection,
and (with the finalizer) encryption, retention and data-subject requests."""
