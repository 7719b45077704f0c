"""Packaging for flask-cnerium: the one place its metadata and extras live."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="flask-cnerium",
    version="0.1.0.dev0",
    description="Durable, retry-safe POST routes and realtime events for Flask.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=find_packages(include=["flask_cnerium", "flask_cnerium.*"]),
    include_package_data=True,
    package_data={"flask_cnerium": ["static/*"]},
    install_requires=[
        "flask>=3.0",
        "werkzeug>=3.0",
        "flask-sock>=0.7",
        "peewee>=3.17",
        "blinker>=1.7",
    ],
    extras_require={
        "postgres": ["psycopg2-binary>=2.9"],
        "redis": ["redis>=5.0"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "websocket-client>=1.8"],
    },
    entry_points={"flask.commands": ["cnerium = flask_cnerium.cli:cnerium_cli"]},
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
    ],
)
