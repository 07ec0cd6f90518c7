"""Peers benchmark: taskmill against dask, celery, dramatiq, a process pool, xargs, parallel."""
