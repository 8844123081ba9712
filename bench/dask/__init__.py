"""``python -m bench.dask``: Dask distributed on one host, plain vs plasma.dask (see __main__)."""
