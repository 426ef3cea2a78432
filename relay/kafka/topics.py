"""Creating the relay's topics at start-up (``RELAY_CREATE_TOPICS``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_DEFAULTS = ("num.partitions", "default.replication.factor")


async def _broker_defaults(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """The cluster's default partitions and replication factor, read from one broker.

    aiokafka speaks CreateTopics up to v3, which cannot ask the broker for its defaults
    (-1 needs v4), so they are read with DescribeConfigs and passed explicitly.
    """
    cluster = await admin.describe_cluster()
    broker = str(cluster["brokers"][0]["node_id"])
    resource = ConfigResource(ConfigResourceType.BROKER, broker, configs=dict.fromkeys(_DEFAULTS))
    (response,) = await admin.describe_configs([resource])
    (described,) = response.resources
    return {entry[0]: int(entry[1]) for entry in described[4] if entry[0] in _DEFAULTS}


async def ensure_topics(
    client_options: dict[str, Any],
    names: Sequence[str],
    partitions: int | None,
    replication: int | None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Raises the aiokafka error of the first topic the cluster refused for another reason.
    """
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        if partitions is None or replication is None:
            defaults = await _broker_defaults(admin)
            partitions = partitions or defaults["num.partitions"]
            replication = replication or defaults["default.replication.factor"]
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication) for name in names]
        )
    finally:
        await admin.close()
    created = []
    for name, code, message in response.topic_errors:
        if code == 0:
            created.append(name)
            log.info("created topic %s (%d partitions, RF %d)", name, partitions, replication)
        elif code != _TOPIC_ALREADY_EXISTS:
            raise for_code(code)(f"creating topic {name}: {message}")
    return created
