"""I/O adapters for sansio-signal (importable as ``sansio_signal.adapters``).

Each module binds the pure core to one library: :mod:`.server` runs the relay on
``websockets``; :mod:`.cli` is the ``sansio-signal`` command.
"""
