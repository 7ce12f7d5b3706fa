"""Integrations of zsad into other frameworks (anomalib).

They sit on top of every layer: an integration may import any part of zsad, and nothing in zsad imports an
integration, so `import zsad` and the `zsad` command never load the framework or pay its import time.
"""
