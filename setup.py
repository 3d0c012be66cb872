"""The one thing pyproject.toml cannot declare: the optional C extension of ``provenant verify``
(service/integrity/_leafscan.c, see service/integrity/leafscan.py). ``optional=True``: without a C
compiler or the SQLite and OpenSSL headers the install still succeeds and verify runs in Python."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.integrity._leafscan",
            sources=["service/integrity/_leafscan.c"],
            libraries=["sqlite3", "crypto"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
            optional=True,
        )
    ]
)
