"""hoopai-relay: HoopAI webhooks into Apache Kafka."""

__version__ = "0.1.0"
