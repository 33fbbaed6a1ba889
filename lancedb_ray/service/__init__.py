"""The service layer: table operations behind the HTTP routes."""
