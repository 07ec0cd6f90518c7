"""One module per system, each runnable as ``python -m bench.peers.drivers.NAME``."""
