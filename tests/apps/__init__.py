"""Flask apps used by the tests, importable by server subprocesses."""
