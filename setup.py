"""Build the optional C speedups; every other setting lives in pyproject.toml.

``wsflask.protocol._speedups``, ``wsflask._iterator`` and ``wsflask._framestacks`` are optional
extensions: without a compiler (or Python's headers) the build prints a warning and the
install carries on with the pure-Python twins.
"""

from setuptools import Extension, setup

setup(
    # MANIFEST.in puts the C source in the sdist; the wheel needs only its build product.
    exclude_package_data={"wsflask": ["*.c"], "wsflask.protocol": ["*.c"]},
    ext_modules=[
        Extension(
            "wsflask.protocol._speedups",
            sources=["wsflask/protocol/_speedups.c"],
            optional=True,
        ),
        Extension("wsflask._iterator", sources=["wsflask/_iterator.c"], optional=True),
        Extension("wsflask._framestacks", sources=["wsflask/_framestacks.c"], optional=True),
    ],
)
