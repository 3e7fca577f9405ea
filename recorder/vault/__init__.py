"""The encrypted vault: the recording file format (segmented AES-256-GCM), the HPKE envelope
around each data key, the key directory and key epochs, when a recording expires (its epoch is
its expiry week, hence ``expiry`` lives here), and the vault directory. Uses ``recorder.store``."""
