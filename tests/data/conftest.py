"""The FTibWorld tests use the session's tiny world (``tiny_world``, tests/conftest.py)."""
