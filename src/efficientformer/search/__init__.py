"""Latency-driven architecture search: latency tables, the V2 supernet and its greedy MES search, V1 slimming,
architecture files (see ``docs/search.md``)."""
