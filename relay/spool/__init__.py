"""The spool (RELAY_SPOOL_DIR): a frame codec, its on-disk storage, the spooling delivery."""
