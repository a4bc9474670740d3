"""agavefs: mount an Agave v2 (Tapis v2) storage system with FUSE.

Layers, imports pointing downward only::

    errors (stdlib)  <-  client (HTTP, Agave)  <-  vfs (cache, read path, spool,
    upload queue; no HTTP)  <-  fuse_ops (thin mfusepy adapter)  <-  cli

``agavefs.emulator`` is a separate local Agave server that imports nothing from the
rest of the package, so that the client and the server cannot share a mistake.
"""

__version__ = "0.1.0"
