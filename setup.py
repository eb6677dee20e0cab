"""Build hook for the optional native HTTP/2 codec (libnghttp2); metadata lives in pyproject.toml.

The extension is optional: without Cython's output or libnghttp2's headers the build goes on
without it and the proxy uses the pure-Python ``h2`` codec (it says so in its log and metrics).
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: no native codec
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("sidecar.native._nghttp2", ["sidecar/native/_nghttp2.pyx"],
                   libraries=["nghttp2"], optional=True)],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )

setup(ext_modules=ext_modules)
