"""The test environment is whole: every test extra imports, and Dask's
scheduler matches Dask itself.

These fail, never skip: a missing extra would otherwise turn the Dask, Parquet
and plotting tests into skips, and a fresh install that pairs a new ``dask``
with a years-old ``distributed`` (issue 17) would pass unnoticed.
"""

import importlib

import pytest

TEST_EXTRAS = [
    "dask",
    "dask.dataframe",
    "distributed",
    "matplotlib",
    "pyarrow",
    "numba",
]


@pytest.mark.parametrize("name", TEST_EXTRAS)
def test_test_extra_imports(name):
    importlib.import_module(name)


def test_dask_and_distributed_are_one_release():
    import dask
    import distributed

    assert dask.__version__ == distributed.__version__, (
        f"dask {dask.__version__} with distributed {distributed.__version__}: "
        "install them through dask's own extra, dask[dataframe,distributed]"
    )
