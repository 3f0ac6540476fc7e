"""Build the native io_uring core where it can be built.

The extension is optional: on a machine without a C compiler, or on a
platform other than Linux, the package installs as pure Python and the loop
uses the emulated backend (it says so in ``python -m iocp_policy info``).
"""

import os
import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux") and os.environ.get("IOCP_POLICY_NO_NATIVE") != "1":
    extra = ["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"]
    if os.environ.get("IOCP_POLICY_ASAN") == "1":
        extra = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-std=gnu11"]
    ext_modules.append(
        Extension(
            "iocp_policy._uring",
            sources=["iocp_policy/_uring.c"],
            extra_compile_args=extra,
            extra_link_args=["-fsanitize=address"] if os.environ.get("IOCP_POLICY_ASAN") == "1" else [],
            optional=True,  # a failed compile leaves a working pure-Python install
        )
    )

setup(ext_modules=ext_modules)
