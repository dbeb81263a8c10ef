"""Field checks shared by the spec and the command line."""

from __future__ import annotations

import pytest

from search.experiment.domains import SpecError, parse_size


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("123", 123), ("4GB", 4 * 10**9), ("500MB", 500 * 10**6), ("500mb", 500 * 10**6),
    ("1.5G", 1_500_000_000), ("2 kb", 2000), ("2GiB", 2 * 2**30), ("10KiB", 10240), ("7B", 7), ("1TB", 10**12),
])
def test_parse_size_reads_bytes_with_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size("--cache-max", text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1", "4XB", "4iB", "1e9", "nan", "inf", "4 GB extra"])
def test_parse_size_refuses_anything_else_naming_the_field(text: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_size("--cache-max", text)
    assert str(err.value).startswith(f"--cache-max: {text!r} is not allowed; a size such as 4GB, 500MB or 0")
