"""Packaged device configs: YAML data only, installed as ``opregistry.configs``."""
