"""Packaged device configs: YAML data only, installed as ``opregistry_configs``."""
