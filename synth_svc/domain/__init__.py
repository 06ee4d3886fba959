"""Pure synthesizer policy: formats, batch progress and retry decisions. No I/O."""
