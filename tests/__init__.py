"""The flask-cnerium test suite."""
