"""The query node's HTTP layer: decodes the LanceDB remote protocol, nothing more."""
