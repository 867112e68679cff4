"""The web console at /ui: server-rendered pages over the same services the API reads (see pages.py)."""
