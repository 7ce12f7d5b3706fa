"""Small shared helpers (logging backends, W&B offline-run reader, atomic files)."""
