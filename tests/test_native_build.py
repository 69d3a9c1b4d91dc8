"""CI builds the native kernel and must use it: EDGESPEC_REQUIRE_NATIVE=1 turns the fallback into a failure."""

import os

import pytest

from edgespec.core import verify


@pytest.mark.skipif(not os.environ.get("EDGESPEC_REQUIRE_NATIVE"), reason="only where the native build is required (CI)")
def test_native_extension_is_in_use():
    assert verify.NATIVE, "edgespec._native did not import: the C++ extension was not built or not installed"
