"""Test support shipped with the package: the provider emulator, tiny engine models and
synthetic samples. Used by the test suite and by ``voiceslot`` demo commands; never by
the services' own code paths."""
