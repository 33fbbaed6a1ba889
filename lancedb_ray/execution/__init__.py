"""Query execution: the interface the query node plans against, and its executors."""
