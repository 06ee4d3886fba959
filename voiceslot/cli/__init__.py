"""The ``voiceslot`` command line: the top layer, free to import both services."""
