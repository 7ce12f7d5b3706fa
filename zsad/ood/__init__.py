"""Zero-shot OOD detection: scorers → cached features → detector → metrics → benchmark report."""
