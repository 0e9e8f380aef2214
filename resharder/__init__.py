"""Moving bucket ranges between shards online (DESIGN.md "Growth").

``python -m resharder move --buckets LO-HI --to N`` copies and catches up the rows of those
buckets by PostgreSQL logical replication (a publication with a row filter on the source, a
subscription on the target), fences writes for a moment, flips ownership in both shard
databases, publishes the next shard map version, verifies, and cleans up.
``python -m resharder status`` shows moves and the map version each process runs.
"""
