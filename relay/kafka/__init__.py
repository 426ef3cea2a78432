"""The Kafka side: the producer, its connection options, topic creation, the delivery seam."""
