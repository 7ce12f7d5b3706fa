"""Detection on a user's own images: fit on normal images, calibrate, score a folder, overlays, the Python API."""
