"""Unreal and real datasets: generators, sources, shard stores and loaders."""
