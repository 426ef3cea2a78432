"""The request path: from a POST to a record ready for Kafka, and the probes."""
