"""Backend plugins shipped with opregistry. Each subpackage is one backend and
imports only :mod:`registry` and :mod:`backends.common`, never another backend."""
