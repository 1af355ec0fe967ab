"""The HTTP API and web page (`rcmed serve`)."""
