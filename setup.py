"""The C part of the package: the object directory's read path and the coordinator's bulk
work (pin scans, a rebuild's placement; plasma/_native/).

Everything else is declared in pyproject.toml. The extension is optional: where it cannot be
built (no C compiler or no Python headers) the install goes on without it, and clients
fall back to the Python read path, saying so once at connect (plasma._native).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "plasma._native._directory",
            sources=[
                "plasma/_native/module.c",
                "plasma/_native/fast_get.c",
                "plasma/_native/directory.c",
                "plasma/_native/bulk.c",
                "plasma/_native/bulk_module.c",
            ],
            depends=[
                "plasma/_native/directory.h",
                "plasma/_native/module.h",
                "plasma/_native/bulk.h",
            ],
            extra_compile_args=[
                "-std=c11",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-missing-field-initializers",
                "-Wno-unused-parameter",
            ],
            optional=True,
        )
    ]
)
