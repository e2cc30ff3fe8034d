"""The one C extension: otlp_ingest/otlp/_idscan.c (the id-length proof, docs/performance.md).

Optional: where no C compiler is found the build goes on without it and otlp/id_views.py uses
its pure-Python proof instead (slower, same answers). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otlp_ingest.otlp._idscan",
            ["otlp_ingest/otlp/_idscan.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror=vla"],
            optional=True,
        )
    ]
)
