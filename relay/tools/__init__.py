"""Operator and developer tools; nothing here runs inside ``relay serve``."""
