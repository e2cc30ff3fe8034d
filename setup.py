"""The C extensions (docs/performance.md):

- otlp_ingest/otlp/_wirecheck.c: the proof that a request is valid as it stands, without a
  decode (otlp/wire_check.py);
- otlp_ingest/receiver/_http1scan.c: the request heads the HTTP/1.1 fast path serves
  (receiver/http1_fast.py);
- otlp_ingest/ring/_records.c: one ring record written or read (checksum included) in one call
  (ring/writer.py, ring/reader.py).

All optional: where no C compiler is found the build goes on without them; validation then
decodes every request (with otlp/id_views.py's pure-Python id proof: slower, same answers), the
ring's Python lines write and read records (the same bytes), and the HTTP/1.1 fast path is off
(every request takes the general path).
Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror=vla"]
_MODULES = {
    "otlp_ingest.otlp._wirecheck": "otlp_ingest/otlp/_wirecheck.c",
    "otlp_ingest.receiver._http1scan": "otlp_ingest/receiver/_http1scan.c",
    "otlp_ingest.ring._records": "otlp_ingest/ring/_records.c",
}

setup(
    ext_modules=[
        Extension(name, [source], extra_compile_args=_FLAGS, optional=True)
        for name, source in _MODULES.items()
    ]
)
